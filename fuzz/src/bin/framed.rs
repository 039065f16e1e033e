//! AFL++ binary of the `framed` target (see `keyward_fuzz::framed`).
fn main() {
    afl::fuzz!(|data: &[u8]| keyward_fuzz::framed::run(data));
}
