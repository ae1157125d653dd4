"""brainchop MeshNet models (the built-in brain MRI cards): TF.js weights, conform to 256³ and back.

tfjs.py        read a TF.js layers model (topology + weights)
network.py     MeshNet in PyTorch from that topology
conform.py     any T1 to the 1 mm 256³ LIA grid and labels back (FreeSurfer's conform)
preprocess.py  foreground crop and intensity scaling
predictor.py   MeshNetPredictor: load once, segment many volumes
"""
