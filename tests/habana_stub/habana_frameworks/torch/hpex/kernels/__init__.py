"""Test-only stand-in for Habana's fused kernels: optimum-habana imports them at module level when
`adapt_transformers_to_gaudi()` runs; DETR calls none of them, and calling one off Gaudi fails loudly."""


class _HpuOnlyKernel:
    @classmethod
    def apply(cls, *args, **kwargs):
        raise NotImplementedError(f"{cls.__name__} is a Gaudi kernel: the test-only habana_frameworks stub has none")


class FusedSDPA(_HpuOnlyKernel):
    pass
