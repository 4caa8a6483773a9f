"""Adapter kinds, one file each: a frozen config class registered with
``@register_adapter("name")`` whose ``attach(model)`` adds the adapter's modules and
hooks (module-level functions taking the module, so deepcopy and pickle keep working).
Every module here is imported on first use of the adapter registry."""
