//! Generated bindings for the `secops:connector` world. Connector crates never use these
//! directly: they implement [`crate::Connector`] and call [`crate::register_connector!`].

wit_bindgen::generate!({
    world: "connector-world",
    path: "wit",
    pub_export_macro: true,
    export_macro_name: "export_component",
    default_bindings_module: "secops_connector::wit",
});
