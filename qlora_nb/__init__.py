"QLoRA fine-tuning of large language models, built for Jupyter notebooks."
__version__ = "0.1.0"

import importlib

# The public names, imported on first use: `import qlora_nb` stays fast and needs no GPU, IPython or
# ipywidgets (the widgets load only when a panel is shown). Each entry is name -> module.
_PUBLIC = {
    'Config': 'config', 'load_config': 'config', 'save_config': 'config', 'config_yaml': 'config',
    'ConfigError': 'config', 'QloraError': 'config', 'to_axolotl': 'axolotl', 'build_tiny': 'tiny',
    'app': 'ui', 'SetupPanel': 'setup_panel', 'DataPanel': 'data_panel', 'TrainPanel': 'train_panel',
    'ChatPanel': 'chat_panel', 'ExportPanel': 'export_panel',
    'prepare_tokenizer': 'templates', 'resolve_template': 'templates', 'BUILTIN_TEMPLATES': 'templates',
    'prepare_data': 'data', 'make_collator': 'data', 'PreparedData': 'data', 'DataReport': 'data',
    'load_tokenizer': 'templates', 'preview_sample': 'preview', 'preview_config': 'preview', 'length_histogram': 'preview',
    'merge': 'merge', 'merge_adapter': 'merge', 'MergeResult': 'merge', 'compare_merge_modes': 'merge',
    'export': 'export', 'export_gguf': 'export', 'ExportResult': 'export',
    'load_model': 'model', 'attach_lora': 'lora', 'trainable_report': 'lora', 'estimate': 'estimate', 'auto_fit': 'estimate',
    'train': 'train', 'TrainResult': 'train', 'train_on_gpus': 'train', 'NotebookView': 'live', 'demo': 'demo', 'load_chat_model': 'chat', 'chat': 'chat',
    'fast_path': 'kernels', 'fuse_lora': 'kernels',
}

def __getattr__(name):
    if name in _PUBLIC:
        return getattr(importlib.import_module(f'qlora_nb.{_PUBLIC[name]}'), name)
    raise AttributeError(f"module 'qlora_nb' has no attribute {name!r}")

def __dir__(): return sorted(list(globals()) + list(_PUBLIC))
