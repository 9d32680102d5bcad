//! Where a VMI's virt-launcher command socket is, as virt-handler finds it.
//!
//! The launcher listens in an `emptyDir` volume named `sockets`; from the node (and from
//! virt-handler, which mounts the kubelet's pods directory at `/pods`) that is
//! `<pods_dir>/<podUID>/volumes/kubernetes.io~empty-dir/sockets/launcher-sock`. A VMI lists
//! its pods in `status.activePods` (pod UID → node); only pods on this node can have a
//! socket here. During a same-node migration two may exist for a moment: like virt-handler,
//! we refuse to guess and wait until only one is left.

use std::io;
use std::path::{Path, PathBuf};

/// The launcher's command socket file name (`StandardLauncherSocketFileName`).
pub const SOCKET_FILE: &str = "launcher-sock";
/// Written next to the socket by virt-handler once it has given up on a launcher
/// (`StandardLauncherUnresponsiveFileName`).
pub const UNRESPONSIVE_MARKER: &str = "launcher-unresponsive";

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("no active pod of the VMI is on node {node:?}")]
    NoPodOnNode { node: String },
    #[error("no launcher socket found (looked at {})", display_paths(.tried))]
    NotFound { tried: Vec<PathBuf> },
    #[error("{} launcher sockets found ({}); waiting for only one to exist", .found.len(), display_paths(.found))]
    Multiple { found: Vec<PathBuf> },
    #[error("launcher at {} is marked unresponsive", .socket.display())]
    Unresponsive { socket: PathBuf },
}

impl SocketError {
    /// The bounded problem kind for self-metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoPodOnNode { .. } | Self::NotFound { .. } | Self::Multiple { .. } => "socket",
            Self::Unresponsive { .. } => "unresponsive",
        }
    }
}

fn display_paths(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(", ")
}

/// The launcher's command socket of a pod, built in one allocation (this runs for every VMI
/// on every pass).
pub fn socket_path(pods_dir: &Path, pod_uid: &str) -> PathBuf {
    const BELOW_POD: [&str; 4] = ["volumes", "kubernetes.io~empty-dir", "sockets", SOCKET_FILE];
    let len = pods_dir.as_os_str().len()
        + 1
        + pod_uid.len()
        + BELOW_POD.iter().map(|part| part.len() + 1).sum::<usize>();
    let mut path = PathBuf::with_capacity(len);
    path.push(pods_dir);
    path.push(pod_uid);
    for part in BELOW_POD {
        path.push(part);
    }
    path
}

/// Finds the one launcher socket of a VMI on `node` (an empty node matches every pod, as
/// in virt-handler) among `active_pods` (pod UID, node name), unless virt-handler marked
/// it unresponsive.
///
/// `connection(socket)` is the kept connection to that launcher, if any, and comes back
/// with the socket. When the VMI has one pod here and we are connected to its launcher,
/// nothing is looked up: the socket path names the pod by its UID, so the connection is to
/// this very launcher, and when the launcher goes the connection breaks, the call fails,
/// the connection is dropped and the next pass looks again. (A lookup walks the kubelet's deep directories, per VMI per
/// pass.) With a second pod here (a same-node migration) every socket is looked for, as
/// virt-handler does. The marker is looked at only when not connected: it says that
/// virt-handler could not reach the launcher, and a kept connection says otherwise.
pub fn find_socket<'a, C>(
    pods_dir: &Path,
    node: &str,
    active_pods: impl IntoIterator<Item = (&'a str, &'a str)>,
    mut connection: impl FnMut(&Path) -> Option<C>,
) -> Result<(PathBuf, Option<C>), SocketError> {
    let mut candidates = candidate_sockets(pods_dir, node, active_pods);
    if let [only] = candidates.as_slice()
        && let Some(kept) = connection(only)
    {
        return Ok((candidates.swap_remove(0), Some(kept)));
    }
    let socket = locate_socket(node, candidates)?;
    match connection(&socket) {
        Some(kept) => Ok((socket, Some(kept))),
        None if is_marked_unresponsive(&socket) => Err(SocketError::Unresponsive { socket }),
        None => Ok((socket, None)),
    }
}

/// Where the sockets of the VMI's pods on `node` would be.
fn candidate_sockets<'a>(
    pods_dir: &Path,
    node: &str,
    active_pods: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<PathBuf> {
    active_pods
        .into_iter()
        .filter(|(_, pod_node)| node.is_empty() || node == *pod_node)
        .filter(|(pod_uid, _)| {
            // A UID from the API becomes a path component: never let it climb out.
            let plain = is_plain_uid(pod_uid);
            if !plain {
                tracing::debug!(pod_uid, "ignoring an active pod with an unusual UID");
            }
            plain
        })
        .map(|(pod_uid, _)| socket_path(pods_dir, pod_uid))
        .collect()
}

/// Which of the `candidates` exists: the one socket, or why there is not exactly one.
fn locate_socket(node: &str, candidates: Vec<PathBuf>) -> Result<PathBuf, SocketError> {
    if candidates.is_empty() {
        return Err(SocketError::NoPodOnNode {
            node: node.to_owned(),
        });
    }
    let (mut found, tried): (Vec<_>, Vec<_>) = candidates
        .into_iter()
        .partition(|socket| exists_no_follow(socket));
    match found.len() {
        0 => Err(SocketError::NotFound { tried }),
        1 => Ok(found.remove(0)),
        _ => {
            found.sort();
            Err(SocketError::Multiple { found })
        }
    }
}

/// Why a socket we were connected to is no use any more, if it is gone: after a kept
/// connection broke, this tells a launcher pod that went away from a launcher that failed.
pub fn gone(socket: &Path) -> Option<SocketError> {
    (!exists_no_follow(socket)).then(|| SocketError::NotFound {
        tried: vec![socket.to_path_buf()],
    })
}

/// Whether virt-handler left the unresponsive marker next to `socket`.
fn is_marked_unresponsive(socket: &Path) -> bool {
    socket
        .parent()
        .is_some_and(|dir| exists_no_follow(&dir.join(UNRESPONSIVE_MARKER)))
}

/// `lstat` rather than `stat`: the kubelet's directories are not ours, and a symlink
/// planted there must not send us elsewhere (virt-handler uses no-follow lookups too).
fn exists_no_follow(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => !meta.file_type().is_symlink(),
        Err(err) => {
            if err.kind() != io::ErrorKind::NotFound {
                tracing::debug!(path = %path.display(), %err, "cannot stat");
            }
            false
        }
    }
}

fn is_plain_uid(uid: &str) -> bool {
    !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn make_socket(pods: &Path, uid: &str) -> PathBuf {
        let socket = socket_path(pods, uid);
        std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
        std::fs::write(&socket, b"").unwrap();
        socket
    }

    fn not_connected(_: &Path) -> Option<()> {
        None
    }

    #[test]
    fn path_is_the_kubelet_layout() {
        assert_eq!(
            socket_path(Path::new("/pods"), "1234-ab"),
            PathBuf::from("/pods/1234-ab/volumes/kubernetes.io~empty-dir/sockets/launcher-sock")
        );
    }

    #[test]
    fn finds_the_socket_of_the_pod_on_this_node_only() {
        let pods = tempfile::tempdir().unwrap();
        let here = make_socket(pods.path(), "aaaa");
        make_socket(pods.path(), "bbbb");
        let found = find_socket(
            pods.path(),
            "node-a",
            [("aaaa", "node-a"), ("bbbb", "node-b")],
            not_connected,
        )
        .unwrap();
        assert_eq!(found, (here, None));
    }

    #[test]
    fn no_pod_on_node_missing_socket_and_two_sockets_are_errors() {
        let pods = tempfile::tempdir().unwrap();
        let err =
            find_socket(pods.path(), "node-a", [("aaaa", "node-b")], not_connected).unwrap_err();
        assert!(matches!(err, SocketError::NoPodOnNode { .. }), "{err}");
        let err =
            find_socket(pods.path(), "node-a", [("aaaa", "node-a")], not_connected).unwrap_err();
        assert!(matches!(err, SocketError::NotFound { .. }), "{err}");
        make_socket(pods.path(), "aaaa");
        make_socket(pods.path(), "bbbb");
        let err = find_socket(
            pods.path(),
            "node-a",
            [("aaaa", "node-a"), ("bbbb", "node-a")],
            not_connected,
        )
        .unwrap_err();
        assert!(
            matches!(err, SocketError::Multiple { ref found } if found.len() == 2),
            "{err}"
        );
        assert_eq!(err.kind(), "socket");
    }

    #[test]
    fn unresponsive_marker_wins() {
        let pods = tempfile::tempdir().unwrap();
        let socket = make_socket(pods.path(), "aaaa");
        std::fs::write(socket.parent().unwrap().join(UNRESPONSIVE_MARKER), b"").unwrap();
        let err =
            find_socket(pods.path(), "node-a", [("aaaa", "node-a")], not_connected).unwrap_err();
        assert_eq!(err.kind(), "unresponsive");
        // A kept connection to the launcher says more than the marker.
        let connected = |found: &Path| (found == socket).then_some(());
        let found = find_socket(pods.path(), "node-a", [("aaaa", "node-a")], connected).unwrap();
        assert_eq!(found, (socket, Some(())));
    }

    #[test]
    fn a_kept_connection_to_the_only_pod_here_needs_no_lookup() {
        let pods = tempfile::tempdir().unwrap();
        // No socket file at all: only the connection speaks for the launcher.
        let socket = socket_path(pods.path(), "aaaa");
        let connected = |found: &Path| (found == socket).then_some(());
        let found = find_socket(
            pods.path(),
            "node-a",
            [("aaaa", "node-a"), ("bbbb", "node-b")],
            connected,
        )
        .unwrap();
        assert_eq!(found, (socket, Some(())));
    }

    #[test]
    fn a_second_pod_here_is_looked_for_even_when_connected() {
        let pods = tempfile::tempdir().unwrap();
        let socket = make_socket(pods.path(), "aaaa");
        let connected = |found: &Path| (found == socket).then_some(());
        let pods_here = [("aaaa", "node-a"), ("bbbb", "node-a")];
        // The migration target has no socket yet: the kept one is the one.
        let found = find_socket(pods.path(), "node-a", pods_here, connected).unwrap();
        assert_eq!(found, (socket.clone(), Some(())));
        // Both launchers listen: refuse to guess, as virt-handler does.
        make_socket(pods.path(), "bbbb");
        let err = find_socket(pods.path(), "node-a", pods_here, connected).unwrap_err();
        assert!(matches!(err, SocketError::Multiple { .. }), "{err}");
    }

    #[test]
    fn uids_cannot_escape_the_pods_dir() {
        let pods = tempfile::tempdir().unwrap();
        let err = find_socket(
            pods.path(),
            "node-a",
            [("../../etc", "node-a")],
            not_connected,
        )
        .unwrap_err();
        assert!(matches!(err, SocketError::NoPodOnNode { .. }), "{err}");
    }

    #[test]
    fn symlinked_sockets_are_not_followed() {
        let pods = tempfile::tempdir().unwrap();
        let real = make_socket(pods.path(), "real");
        let link = socket_path(pods.path(), "link");
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err =
            find_socket(pods.path(), "node-a", [("link", "node-a")], not_connected).unwrap_err();
        assert!(matches!(err, SocketError::NotFound { .. }), "{err}");
    }
}
