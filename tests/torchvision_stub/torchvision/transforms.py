"""Importable only: DETR and the Gaudi tests use no torchvision transform."""
