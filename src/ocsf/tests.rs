//! Unit tests of the OCSF builders (the mappings are tested against the schema in host-test).
