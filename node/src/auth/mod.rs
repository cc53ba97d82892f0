//! Who may call what when TLS is on: `policy` decides (pure), `layer` applies it to every gRPC
//! request, naming the caller's certificate identity in each refusal.

pub mod layer;
pub mod policy;
