"""MONAI bundles (Model Zoo layout): read the configs, install with a manifest, build the network, predict.

config.py     configs/metadata.json + configs/inference.json -> BundleSpec (torch-free)
channels.py   input channel names and output labels from the metadata (torch-free)
install.py    install into <models_dir>/bundles/<id>/ with a hash manifest; the catalog's cards
network.py    the network from the spec, weights loaded strictly
predictor.py  BundlePredictor: pre-processing, memory-bounded sliding window, back to the input grid
"""
