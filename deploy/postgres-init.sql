-- Synapse's own database beside the bridge's (Synapse needs C collation).
CREATE DATABASE synapse ENCODING 'UTF8' LC_COLLATE='C' LC_CTYPE='C' TEMPLATE template0 OWNER bridge;
