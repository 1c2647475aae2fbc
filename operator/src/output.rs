//! The two objects the operator writes: the ConfigMap holding the snapshot and the Secret holding
//! the secret snapshot. Pure: built from `compile()`'s output, sized, compressed when large, and
//! stamped with digests so an unchanged configuration is recognised without comparing bodies.

use std::collections::BTreeMap;
use std::io::Write;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use keygate_crds::Compiled;
use keygate_crds::snapshot::{SECRETS_FILE, SNAPSHOT_FILE};
use sha2::{Digest, Sha256};

/// Annotation carrying `Snapshot::hash()` on both objects.
pub const SNAPSHOT_HASH_ANNOTATION: &str = "keygate.dev/snapshot-hash";
/// Annotation on the Secret carrying a digest of its data; lives only on the Secret itself.
pub const SECRETS_DIGEST_ANNOTATION: &str = "keygate.dev/secrets-digest";
/// ConfigMap key of the gzip-compressed snapshot, used when the JSON is large.
pub const SNAPSHOT_GZ_FILE: &str = "snapshot.json.gz";
/// Objects above this many bytes of data are refused by the API server (etcd's limit is 1.5 MiB,
/// the API's documented ConfigMap limit 1 MiB); stay under it with room for metadata.
pub const OBJECT_DATA_LIMIT: usize = 1_000_000;
/// Snapshots larger than this are stored gzip-compressed.
pub const COMPRESS_ABOVE: usize = 256 * 1024;

/// Where the operator writes.
#[derive(Clone, Debug)]
pub struct Target {
    /// Namespace of both objects (the operator's own).
    pub namespace: String,
    /// ConfigMap name.
    pub config_map: String,
    /// Secret name.
    pub secret: String,
}

/// The objects to apply.
#[derive(Clone, Debug)]
pub struct Outputs {
    /// The snapshot.
    pub config_map: ConfigMap,
    /// The secret snapshot.
    pub secret: Secret,
    /// Snapshot hash, as annotated.
    pub snapshot_hash: String,
    /// Digest of the secret snapshot, as annotated on the Secret.
    pub secrets_digest: String,
    /// Bytes of snapshot data stored in the ConfigMap (after compression, as the API counts it).
    pub stored_bytes: usize,
}

/// The configuration does not fit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the compiled {what} is {bytes} bytes after compression, over the {limit}-byte limit of a Kubernetes object")]
pub struct TooLarge {
    /// `snapshot` or `secret snapshot`.
    pub what: &'static str,
    /// Stored size.
    pub bytes: usize,
    /// The limit.
    pub limit: usize,
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_string(),
            "keygate-operator".to_string(),
        ),
        ("app.kubernetes.io/part-of".to_string(), "keygate".to_string()),
    ])
}

/// Builds both objects, or says which does not fit.
pub fn build(compiled: &Compiled, target: &Target) -> Result<Outputs, TooLarge> {
    // compile() already hashed the snapshot; serializing a large one again is not free.
    let snapshot_hash = compiled.secrets.snapshot_hash.clone();
    let json = compiled.snapshot.to_json();
    let mut config_map = ConfigMap {
        metadata: meta(
            &target.config_map,
            &target.namespace,
            &[(SNAPSHOT_HASH_ANNOTATION, &snapshot_hash)],
        ),
        ..ConfigMap::default()
    };
    let stored_bytes = if json.len() > COMPRESS_ABOVE {
        let gz = gzip(&json);
        // binaryData is base64 in the stored object: count what the API server counts.
        let stored = gz.len().div_ceil(3) * 4;
        config_map.binary_data = Some(BTreeMap::from([(SNAPSHOT_GZ_FILE.to_string(), ByteString(gz))]));
        stored
    } else {
        let len = json.len();
        let text = String::from_utf8(json).expect("serde_json writes UTF-8");
        config_map.data = Some(BTreeMap::from([(SNAPSHOT_FILE.to_string(), text)]));
        len
    };
    if stored_bytes > OBJECT_DATA_LIMIT {
        return Err(TooLarge {
            what: "snapshot",
            bytes: stored_bytes,
            limit: OBJECT_DATA_LIMIT,
        });
    }

    let secrets_json = compiled.secrets.to_json();
    let secret_stored = secrets_json.len().div_ceil(3) * 4;
    if secret_stored > OBJECT_DATA_LIMIT {
        return Err(TooLarge {
            what: "secret snapshot",
            bytes: secret_stored,
            limit: OBJECT_DATA_LIMIT,
        });
    }
    let secrets_digest = hex::encode(Sha256::digest(&secrets_json));
    let secret = Secret {
        metadata: meta(
            &target.secret,
            &target.namespace,
            &[
                (SNAPSHOT_HASH_ANNOTATION, &snapshot_hash),
                (SECRETS_DIGEST_ANNOTATION, &secrets_digest),
            ],
        ),
        data: Some(BTreeMap::from([(SECRETS_FILE.to_string(), ByteString(secrets_json))])),
        type_: Some("Opaque".to_string()),
        ..Secret::default()
    };
    Ok(Outputs {
        config_map,
        secret,
        snapshot_hash,
        secrets_digest,
        stored_bytes,
    })
}

fn meta(name: &str, namespace: &str, annotations: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        labels: Some(labels()),
        annotations: Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..ObjectMeta::default()
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(bytes).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

/// The annotation value of `key` on an object's metadata.
pub fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_crds::snapshot::Route;
    use keygate_crds::{SecretSnapshot, Snapshot};

    fn target() -> Target {
        Target {
            namespace: "keygate-system".into(),
            config_map: "keygate-config".into(),
            secret: "keygate-secrets".into(),
        }
    }

    fn compiled(routes: usize, secret: &str) -> Compiled {
        let route = |i: usize| -> Route {
            serde_json::from_value(serde_json::json!({
                "id": format!("team-{i}/route-{i}"), "pathPrefix": format!("/team-{i}/some/longer/path/{i:08}"),
                "destination": {"type": "upstream", "url": format!("https://api-{i}.example.com/v1")},
                "stripPrefix": true, "connectTimeoutMs": 5000, "requestTimeoutMs": 30000,
                "bodyLimit": 10485760, "upstreamProtocol": "auto", "auth": "none"
            }))
            .unwrap()
        };
        let snapshot = Snapshot {
            format: 1,
            routes: (0..routes).map(route).collect(),
            ..Snapshot::default()
        };
        let hash = snapshot.hash();
        let secrets = SecretSnapshot {
            format: 1,
            snapshot_hash: hash,
            values: BTreeMap::from([("ns/keys/api".to_string(), secret.to_string())]),
        };
        Compiled {
            snapshot,
            secrets,
            reports: Vec::new(),
            secrets_read: Default::default(),
        }
    }

    #[test]
    fn small_snapshots_are_plain_json_and_hashes_are_annotated() {
        let c = compiled(3, "s3cr3t-value");
        let out = build(&c, &target()).unwrap();
        let data = out.config_map.data.as_ref().unwrap();
        assert_eq!(data[SNAPSHOT_FILE].as_bytes(), c.snapshot.to_json());
        assert_eq!(
            annotation(&out.config_map.metadata, SNAPSHOT_HASH_ANNOTATION),
            Some(c.snapshot.hash().as_str())
        );
        assert!(!serde_json::to_string(&out.config_map).unwrap().contains("s3cr3t-value"));
        assert_eq!(out.secret.data.as_ref().unwrap()[SECRETS_FILE].0, c.secrets.to_json());
        assert_eq!(out.config_map.metadata.namespace.as_deref(), Some("keygate-system"));
    }

    #[test]
    fn large_snapshots_are_compressed_and_round_trip() {
        let c = compiled(5_000, "x");
        let json_len = c.snapshot.to_json().len();
        assert!(
            json_len > OBJECT_DATA_LIMIT,
            "the test needs a snapshot over the limit uncompressed ({json_len})"
        );
        let out = build(&c, &target()).unwrap();
        assert!(out.config_map.data.is_none());
        let gz = &out.config_map.binary_data.as_ref().unwrap()[SNAPSHOT_GZ_FILE].0;
        let mut json = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut json).unwrap();
        assert_eq!(json, c.snapshot.to_json());
        assert!(out.stored_bytes < OBJECT_DATA_LIMIT);
        println!(
            "{} routes: {json_len} bytes of JSON stored as {} bytes",
            5_000, out.stored_bytes
        );
    }

    #[test]
    fn snapshots_too_large_even_compressed_are_refused() {
        // Random-looking upstream names defeat compression.
        let mut c = compiled(0, "x");
        let noise = |i: u64, field: u8| hex::encode(Sha256::digest([&i.to_le_bytes()[..], &[field]].concat()));
        c.snapshot.routes = (0..12_000u64)
            .map(|i| {
                serde_json::from_value(serde_json::json!({
                    "id": format!("ns/{}", noise(i, 0)), "pathPrefix": format!("/{}", noise(i, 1)),
                    "destination": {"type": "upstream", "url": format!("https://{}.example.com", noise(i, 2))},
                    "stripPrefix": true, "connectTimeoutMs": 1, "requestTimeoutMs": 1,
                    "bodyLimit": 1, "upstreamProtocol": "auto", "auth": "none"
                }))
                .unwrap()
            })
            .collect();
        let err = build(&c, &target()).unwrap_err();
        assert_eq!(err.what, "snapshot");
        assert!(err.bytes > OBJECT_DATA_LIMIT);
        assert!(err.to_string().contains("over the 1000000-byte limit"));
    }
}
