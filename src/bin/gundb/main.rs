//! gundb CLI
fn main() {}
