"""nnU-Net v2 trained models as catalog models (format "nnunet-v2"), run by nnU-Net's own predictor.

Public interface (stable; other rooms, e.g. TotalSegmentator's, build on it):

- :mod:`models.nnunet.folder` (torch-free): ``read_model_folder(dir, folds=None, folder_name=None) ->
  NnunetSpec`` reads and checks ``dataset.json`` / ``plans.json`` / ``fold_*`` of a
  ``<Trainer>__<Plans>__<configuration>/`` folder (labels incl. region-based ones, channels, normalisation,
  folds); ``is_model_folder(dir)``; ``NnunetError`` (an ``InstallError``).
- :mod:`models.nnunet.install` (torch-free at import): ``install_nnunet(source, models_dir, options)`` for a
  model folder or an ``nnUNetv2_export_model_to_zip`` zip -> ``<models_dir>/nnunet/<id>/`` with a manifest;
  ``install_model_folder``; ``nnunet_cards(models_dir)``; ``card_from_spec``; ``model_id(spec)``;
  ``NNUNET_FORMAT`` (registered in :func:`models.formats.formats`); ``WEIGHTS_FORMAT = "nnunet-v2"``.
- :mod:`models.nnunet.validate` (torch): ``validate_weights(spec, trust_code)`` (restricted unpickling,
  network built from the plans, weights loaded, one forward pass), ``load_checkpoint``, ``build_network``.
- :mod:`models.nnunet.geometry`: ``nnunet_input(volumes) -> ((C, z, y, x) array, properties)`` as
  nnU-Net's SimpleITK reader gives them; ``labels_to_volume_grid(labels_zyx)``.
- :mod:`models.nnunet.export`: ``logits_to_labels(logits, plans_manager, configuration_manager,
  label_manager, properties)``: nnU-Net's export to the original grid, in slabs of output planes.
- :mod:`models.nnunet.preprocess`: ``preprocess(volumes, properties, plans_manager, configuration_manager)``:
  nnU-Net's preprocessed array computed plane by plane (or None: nnU-Net's own adapter is needed), with
  :mod:`models.nnunet.resample` (scipy's cubic zoom by planes, zoom slabs).
- :mod:`models.nnunet.predictor` (torch, nnunetv2): ``NnunetRunner(folder, folds, device)`` with
  ``predict(volumes, on_progress=, is_cancelled=) -> labels (I, J, K)`` on the first volume's grid (nnU-Net's
  label values), and ``NnunetPredictor`` (the catalog's predictor: ``load(card, models_dir, device)``).

Card of an installed model: ``params`` = weights_format, model_dir ("nnunet/<id>"), folder, configuration,
folds, trainer_name, mirroring_axes, regions; ``input["channels"]`` = upload names (one ``image.<name>`` form
part each when there are several).
"""
