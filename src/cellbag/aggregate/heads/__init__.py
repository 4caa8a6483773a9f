"""Built-in heads. Every module here is imported by the registry on first use, so a new
head is one file in this folder with ``@register_head("name")`` on its class."""
