"""Helpers that build test artefacts (e.g. MONAI bundles) at test time; nothing here is loaded by workers."""
