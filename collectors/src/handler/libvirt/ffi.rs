//! The few libvirt calls this source makes, over `virt::sys`, with owners that never panic.
//!
//! We do not use `virt`'s safe wrappers here: `Connect::all_domain_stats` never frees the
//! records it returns (it leaked ~60 MB per 200 calls of 1000 domains), its typed parameters
//! are not decoded, and `Drop for Connect`/`Drop for Domain` panic when libvirt reports an
//! error on close — which is exactly what happens after the daemon went away. Every function
//! here blocks on an RPC without a timeout: call them from a blocking thread only.

use std::ffi::{CStr, CString, c_int, c_uint, c_void};
use std::ptr;
use std::sync::OnceLock;
use std::sync::mpsc;

use virt::sys;

/// A libvirt error, copied out of libvirt's thread-local "last error" on the calling thread.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (code {code}, domain {domain})")]
pub struct LibvirtError {
    pub code: i32,
    pub domain: i32,
    pub message: String,
}

impl LibvirtError {
    /// Reads and clears the calling thread's last libvirt error.
    fn last(what: &str) -> Self {
        // SAFETY: virGetLastError returns a pointer to thread-local storage (or NULL) that
        // stays valid until the next libvirt call on this thread; we copy it out at once.
        unsafe {
            let err = sys::virGetLastError();
            let copied = if err.is_null() {
                LibvirtError {
                    code: -1,
                    domain: -1,
                    message: format!("{what} failed without an error message"),
                }
            } else {
                let message = if (*err).message.is_null() {
                    format!("{what} failed")
                } else {
                    CStr::from_ptr((*err).message)
                        .to_string_lossy()
                        .into_owned()
                };
                LibvirtError {
                    code: (*err).code,
                    domain: (*err).domain,
                    message,
                }
            };
            sys::virResetLastError();
            copied
        }
    }

    /// Whether the error means the connection itself is gone or unusable, so it must be
    /// reopened. The codes are the ones KubeVirt's launcher treats as "connection lost"
    /// (`checkConnectionLost` in `virtwrap/cli/libvirt.go`).
    pub fn is_connection_error(&self) -> bool {
        const CONNECTION_ERRORS: [u32; 7] = [
            sys::VIR_ERR_INTERNAL_ERROR,
            sys::VIR_ERR_NO_MEMORY,
            sys::VIR_ERR_INVALID_CONN,
            sys::VIR_ERR_SYSTEM_ERROR,
            sys::VIR_ERR_RPC,
            sys::VIR_ERR_AUTH_FAILED,
            sys::VIR_ERR_AUTH_CANCELLED,
        ];
        u32::try_from(self.code).is_ok_and(|code| CONNECTION_ERRORS.contains(&code))
    }
}

extern "C" fn ignore_error(_data: *mut c_void, _error: sys::virErrorPtr) {}

/// Process-wide libvirt setup, done once before the first connection:
///
/// - libvirt's default error handler prints every error on stderr (`libvirt: XML-RPC error
///   : ...`); we report errors ourselves, so it is replaced by one that does nothing;
/// - the default event loop is registered and run on a thread of its own, which is what
///   lets connections use keepalive messages: a daemon that stops answering is then
///   detected by libvirt itself and blocked calls fail instead of hanging forever.
///
/// Returns whether the event loop is available (keepalive can be enabled).
pub fn init() -> bool {
    static EVENT_LOOP: OnceLock<bool> = OnceLock::new();
    *EVENT_LOOP.get_or_init(|| {
        // SAFETY: plain libvirt global setup calls, done once.
        unsafe { sys::virSetErrorFunc(ptr::null_mut(), Some(ignore_error)) };
        // SAFETY: as above; must happen before any connection is opened.
        if unsafe { sys::virEventRegisterDefaultImpl() } < 0 {
            let err = LibvirtError::last("virEventRegisterDefaultImpl");
            tracing::warn!(error = %err, "libvirt event loop unavailable; no keepalive");
            return false;
        }
        let spawned = std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| {
                loop {
                    // SAFETY: runs one iteration of the registered default event loop.
                    if unsafe { sys::virEventRunDefaultImpl() } < 0 {
                        let err = LibvirtError::last("virEventRunDefaultImpl");
                        tracing::warn!(error = %err, "libvirt event loop iteration failed");
                        std::thread::sleep(std::time::Duration::from_secs(1));
                    }
                }
            });
        match spawned {
            Ok(_) => true,
            Err(err) => {
                tracing::warn!(error = %err, "cannot start the libvirt event thread; no keepalive");
                false
            }
        }
    })
}

/// An open connection. Closing errors are ignored (a dead daemon makes `virConnectClose`
/// fail, and there is nothing left to do about it).
#[derive(Debug)]
pub struct Conn {
    ptr: sys::virConnectPtr,
}

// SAFETY: libvirt connections are thread-safe objects; we only ever use one from one
// thread at a time anyway (it lives behind a mutex).
unsafe impl Send for Conn {}

impl Drop for Conn {
    fn drop(&mut self) {
        // SAFETY: we own one reference to the connection; the result is deliberately ignored.
        let _ = unsafe { sys::virConnectClose(self.ptr) };
    }
}

impl Conn {
    /// Opens `uri` read-only: everything this source asks (bulk stats, domain XML, vCPU pin
    /// info, node info) is allowed on a read-only connection.
    pub fn open_read_only(uri: &str) -> Result<Conn, LibvirtError> {
        let c_uri = CString::new(uri).map_err(|_| LibvirtError {
            code: -1,
            domain: -1,
            message: format!("URI contains a NUL byte: {uri:?}"),
        })?;
        // SAFETY: c_uri is a valid NUL-terminated string for the duration of the call.
        let ptr = unsafe { sys::virConnectOpenReadOnly(c_uri.as_ptr()) };
        if ptr.is_null() {
            return Err(LibvirtError::last("virConnectOpenReadOnly"));
        }
        Ok(Conn { ptr })
    }

    /// Sends keepalive probes every `interval` seconds; after `count` unanswered ones the
    /// connection is closed by libvirt. Needs the event loop of [`init`].
    pub fn set_keepalive(&self, interval: i32, count: u32) -> Result<(), LibvirtError> {
        // SAFETY: self.ptr is a valid open connection.
        if unsafe { sys::virConnectSetKeepAlive(self.ptr, interval, count) } < 0 {
            return Err(LibvirtError::last("virConnectSetKeepAlive"));
        }
        Ok(())
    }

    /// A local check (no RPC): false once libvirt noticed the connection broke.
    pub fn is_alive(&self) -> bool {
        // SAFETY: self.ptr is a valid connection object.
        let alive = unsafe { sys::virConnectIsAlive(self.ptr) };
        if alive < 0 {
            let _ = LibvirtError::last("virConnectIsAlive");
        }
        alive == 1
    }

    /// The host's CPU count as libvirt-go computes it for `GetVcpuPinInfo`
    /// (nodes × sockets × cores × threads), which sizes each vCPU's CPU map.
    pub fn host_cpus(&self) -> Result<u32, LibvirtError> {
        let mut info = std::mem::MaybeUninit::<sys::virNodeInfo>::zeroed();
        // SAFETY: info points to writable memory of the right type.
        if unsafe { sys::virNodeGetInfo(self.ptr, info.as_mut_ptr()) } < 0 {
            return Err(LibvirtError::last("virNodeGetInfo"));
        }
        // SAFETY: virNodeGetInfo succeeded, so it filled the struct (and it was zeroed).
        let info = unsafe { info.assume_init() };
        Ok(info
            .nodes
            .saturating_mul(info.sockets)
            .saturating_mul(info.cores)
            .saturating_mul(info.threads))
    }

    /// `virConnectGetAllDomainStats`; the records are freed when the list is dropped.
    pub fn all_domain_stats(&self, stats: u32, flags: u32) -> Result<StatsList, LibvirtError> {
        let mut records: *mut sys::virDomainStatsRecordPtr = ptr::null_mut();
        // SAFETY: records receives a libvirt-allocated, NULL-terminated array on success.
        let n = unsafe {
            sys::virConnectGetAllDomainStats(
                self.ptr,
                stats as c_uint,
                &mut records,
                flags as c_uint,
            )
        };
        if n < 0 {
            return Err(LibvirtError::last("virConnectGetAllDomainStats"));
        }
        Ok(StatsList {
            records,
            len: usize::try_from(n).unwrap_or(0),
        })
    }
}

/// The record array returned by `virConnectGetAllDomainStats`, freed with
/// `virDomainStatsRecordListFree` (which also frees the domains and typed parameters).
pub struct StatsList {
    records: *mut sys::virDomainStatsRecordPtr,
    len: usize,
}

impl Drop for StatsList {
    fn drop(&mut self) {
        if !self.records.is_null() {
            // SAFETY: the array came from virConnectGetAllDomainStats and is freed only here.
            unsafe { sys::virDomainStatsRecordListFree(self.records) };
        }
    }
}

/// A record list on its way to the reaper thread.
struct Reaped(StatsList);

// SAFETY: freeing libvirt objects from another thread is fine (they are reference counted
// with atomic operations and locked internally); nothing else touches the list any more.
unsafe impl Send for Reaped {}

impl StatsList {
    /// Frees the list on a thread of its own instead of the caller's: freeing a thousand
    /// records (one `virDomain` each) takes about as long as a third of the bulk call, and
    /// nothing in a collection pass waits for it. Falls back to freeing here when the
    /// thread cannot run.
    pub fn free_in_background(self) {
        static REAPER: OnceLock<Option<mpsc::Sender<Reaped>>> = OnceLock::new();
        let reaper = REAPER.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Reaped>();
            std::thread::Builder::new()
                .name("libvirt-free".into())
                .spawn(move || rx.into_iter().for_each(|Reaped(list)| drop(list)))
                .ok()
                .map(|_| tx)
        });
        if let Some(tx) = reaper {
            // On error the list comes back inside the error and is freed here.
            let _ = tx.send(Reaped(self));
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = Record<'_>> {
        (0..self.len).filter_map(move |i| {
            // SAFETY: i < len, the array holds len valid record pointers.
            let rec = unsafe { *self.records.add(i) };
            if rec.is_null() {
                None
            } else {
                Some(Record {
                    rec,
                    _list: std::marker::PhantomData,
                })
            }
        })
    }
}

/// One domain's record; borrowed from its [`StatsList`].
#[derive(Clone, Copy)]
pub struct Record<'a> {
    rec: sys::virDomainStatsRecordPtr,
    _list: std::marker::PhantomData<&'a StatsList>,
}

/// A typed parameter's value, borrowed from the record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Int(i64),
    UInt(u64),
    Double(f64),
    Bool(bool),
    Str(&'a CStr),
}

impl<'a> Record<'a> {
    /// The domain's name (a local lookup, no RPC).
    pub fn name(&self) -> Option<&'a CStr> {
        // SAFETY: the record and its domain are valid while the list lives.
        let name = unsafe { sys::virDomainGetName((*self.rec).dom) };
        // SAFETY: libvirt returns a pointer into the domain object (or NULL).
        (!name.is_null()).then(|| unsafe { CStr::from_ptr(name) })
    }

    /// The domain's UUID in canonical text form (a local lookup, no RPC). Formatted here
    /// rather than with `virDomainGetUUIDString`, whose snprintf per byte showed up in
    /// passes over many domains.
    pub fn uuid(&self) -> Option<String> {
        let mut raw = [0u8; sys::VIR_UUID_BUFLEN as usize];
        // SAFETY: raw has VIR_UUID_BUFLEN bytes, as the API requires.
        if unsafe { sys::virDomainGetUUID((*self.rec).dom, raw.as_mut_ptr()) } < 0 {
            let _ = LibvirtError::last("virDomainGetUUID");
            return None;
        }
        Some(format_uuid(&raw))
    }

    /// The domain's run-time ID (changes whenever the domain is restarted; no RPC).
    pub fn id(&self) -> u32 {
        // SAFETY: the record's domain is valid while the list lives.
        unsafe { sys::virDomainGetID((*self.rec).dom) }
    }

    /// Calls `f` for every typed parameter, in libvirt's order.
    pub fn for_each_param(&self, mut f: impl FnMut(&'a [u8], Value<'a>)) {
        // SAFETY: params/nparams describe libvirt's array, valid while the list lives.
        let (params, n) = unsafe { ((*self.rec).params, (*self.rec).nparams) };
        if params.is_null() {
            return;
        }
        for i in 0..usize::try_from(n).unwrap_or(0) {
            // SAFETY: i < nparams.
            let p: &'a sys::virTypedParameter = unsafe { &*params.add(i) };
            // SAFETY: field is a NUL-terminated string within its 80 bytes (VIR_TYPED_PARAM_FIELD_LENGTH).
            let field = unsafe { CStr::from_ptr(p.field.as_ptr()) }.to_bytes();
            // SAFETY: the union member read is the one selected by type_.
            let value = unsafe {
                match p.type_ as u32 {
                    sys::VIR_TYPED_PARAM_INT => Value::Int(i64::from(p.value.i)),
                    sys::VIR_TYPED_PARAM_UINT => Value::UInt(u64::from(p.value.ui)),
                    sys::VIR_TYPED_PARAM_LLONG => Value::Int(p.value.l),
                    sys::VIR_TYPED_PARAM_ULLONG => Value::UInt(p.value.ul),
                    sys::VIR_TYPED_PARAM_DOUBLE => Value::Double(p.value.d),
                    sys::VIR_TYPED_PARAM_BOOLEAN => Value::Bool(p.value.b != 0),
                    sys::VIR_TYPED_PARAM_STRING if !p.value.s.is_null() => {
                        Value::Str(CStr::from_ptr(p.value.s))
                    }
                    _ => continue,
                }
            };
            f(field, value);
        }
    }

    /// The live domain XML (`virDomainGetXMLDesc`, one RPC).
    pub fn xml_desc(&self) -> Result<String, LibvirtError> {
        // SAFETY: the record's domain is valid; the returned string is malloc'ed by libvirt.
        let xml = unsafe { sys::virDomainGetXMLDesc((*self.rec).dom, 0) };
        if xml.is_null() {
            return Err(LibvirtError::last("virDomainGetXMLDesc"));
        }
        // SAFETY: xml is a NUL-terminated string we own and free right after copying.
        let text = unsafe { CStr::from_ptr(xml) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: allocated by libvirt with malloc; freed once.
        unsafe { libc::free(xml.cast()) };
        Ok(text)
    }

    /// Which host CPUs each vCPU may run on (`virDomainGetVcpuPinInfo`, one RPC), for
    /// `vcpus` vCPUs and `host_cpus` host CPUs, as libvirt-go's `GetVcpuPinInfo` returns it.
    pub fn vcpu_pin_info(
        &self,
        vcpus: u32,
        host_cpus: u32,
    ) -> Result<Vec<Vec<bool>>, LibvirtError> {
        if vcpus == 0 || host_cpus == 0 {
            return Ok(Vec::new());
        }
        let maplen = host_cpus.div_ceil(8) as usize;
        let mut maps = vec![0u8; maplen * vcpus as usize];
        // SAFETY: maps holds vcpus × maplen bytes as the API requires.
        let n = unsafe {
            sys::virDomainGetVcpuPinInfo(
                (*self.rec).dom,
                vcpus as c_int,
                maps.as_mut_ptr(),
                maplen as c_int,
                sys::VIR_DOMAIN_AFFECT_CURRENT,
            )
        };
        if n < 0 {
            return Err(LibvirtError::last("virDomainGetVcpuPinInfo"));
        }
        let n = usize::try_from(n).unwrap_or(0).min(vcpus as usize);
        Ok(maps
            .chunks_exact(maplen)
            .take(n)
            .map(|map| {
                (0..host_cpus as usize)
                    .map(|cpu| map[cpu / 8] & (1 << (cpu % 8)) != 0)
                    .collect()
            })
            .collect())
    }
}

/// `8-4-4-4-12` lower-case hex, as libvirt prints UUIDs.
fn format_uuid(raw: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for (i, byte) in raw.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_formatted_like_libvirt() {
        let raw = [
            0x6f, 0x8b, 0x5a, 0x10, 0x9c, 0x2e, 0x4d, 0x1f, 0xa0, 0x01, 0xff, 0x00, 0x12, 0x34,
            0x56, 0x78,
        ];
        assert_eq!(format_uuid(&raw), "6f8b5a10-9c2e-4d1f-a001-ff0012345678");
    }
}
