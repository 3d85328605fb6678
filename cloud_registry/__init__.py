"""Reserved for the cloud_registry issue; nothing here yet (see README's feature table)."""
