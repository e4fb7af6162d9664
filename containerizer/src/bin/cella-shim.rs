//! `cella-shim`: see `cella_containerizer::shim`.
fn main() {
    cella_containerizer::shim::main()
}
