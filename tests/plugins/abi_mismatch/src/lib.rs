//! Claims ABI version 999 and exports nothing else: a host that reads
//! further than the version would crash on the missing table.

#[no_mangle]
pub extern "C" fn nngeo_plugin_abi_version() -> u32 {
    999
}
