"""Data: datalists, readers, modality presets, label-noise simulation, pre-flight check, sample data.

Modules (imported on demand, so ``import lilaw_med.data`` stays light):

* :mod:`lilaw_med.data.datalist`: ``load_datalist``, ``save_datalist``, ``group_kfold``, ``Datalist``
* :mod:`lilaw_med.data.readers`: ``LoadMedicalImaged`` (DICOM file/series, NIfTI, PNG/JPEG/TIFF, .npy)
* :mod:`lilaw_med.data.presets`: ``PresetSpec``, ``register_preset``, ``get_preset`` (one specification per preset)
* :mod:`lilaw_med.data.transforms`: ``build_transforms``, ``preset_defaults``
* :mod:`lilaw_med.data.dataset`: ``build_dataset`` (caching options)
* :mod:`lilaw_med.data.noise`: ``add_noise``, ``add_noise_to_datalist``, ``load_noise_truth``
* :mod:`lilaw_med.data.preflight`: ``check_datalist``, ``preflight_or_raise``
* :mod:`lilaw_med.data.sample`: ``write_sample_data``
* :mod:`lilaw_med.data.npz_import`: ``import_npz``
* :mod:`lilaw_med.data.wsi`: ``LoadWSIPatchd``, ``TiffSlideWSIReader``, ``patch_dataset``
"""
