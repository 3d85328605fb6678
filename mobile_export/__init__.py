"""Reserved for the mobile_export issue; nothing here yet (see README's feature table)."""
