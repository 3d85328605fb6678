"""Reserved for the device_agent issue; nothing here yet (see README's feature table)."""
