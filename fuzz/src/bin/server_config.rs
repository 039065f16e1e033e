//! AFL++ binary of the `server_config` target (see `keyward_fuzz::server_config`).
fn main() {
    afl::fuzz!(|data: &[u8]| keyward_fuzz::server_config::run(data));
}
