-- An authentication tag of each wrapped tenant key under a server-held key that is not in this
-- database (docs/adr/0007-tenant-key-mac.md): the keyring refuses a tenant key whose tag is
-- missing or wrong before asking the KMS to unwrap it. NULL for rows written before this
-- migration, refused until `keyward store authenticate-tenant-keys` (docs/operations.md).
ALTER TABLE tenant_keys ADD COLUMN mac BLOB NULL;
