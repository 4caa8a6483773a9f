"""The ground floor: mechanics shared by several stages (imports no stage)."""
