"""MONAI bundles (Model Zoo layout), run as MONAI runs them. One module per step:

config.py     read configs/metadata.json and configs/inference.json|yaml as data (torch-free, nothing
              evaluated): the card's names, labels, input channels (channels.py)
trust.py      which part of the config the service evaluates, and which of it runs code ($ expressions,
              scripts/ or other non-MONAI components, imports); the first such element names the refusal
              without --trust-code (torch-free)
build.py      MONAI's ConfigParser builds preprocessing, network, inferer, postprocessing with the service's
              overrides; weights loaded strictly; tiny forward pass; label values probed
install.py    install = check (build.py) + copy with a hash manifest (trust, installer, labels); the cards
stitching.py  the memory-bounded label path where it is exact (SlidingWindowInferer + argmax first)
predictor.py  BundlePredictor: one case through the bundle's own pipeline, on the input's grid
regrid.py     a label map on the model's grid put on the input's grid in slabs (MONAI's nearest values)
"""
