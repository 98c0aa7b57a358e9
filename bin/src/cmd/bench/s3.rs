//! AWS Signature Version 4 for path-style S3 requests, header-based, unsigned payload.
//!
//! Reference: "Signature Calculations for the Authorization Header: Transferring Payload in a
//! Single Chunk" in the Amazon S3 API reference; the unit tests use its GET Object example.
//! HMAC-SHA256 is the 15-line RFC 2104 construction over `sha2`, so no second digest version
//! enters the build.

use sha2::{Digest, Sha256};

/// The payload hash sent in `x-amz-content-sha256`: the body is not part of the signature.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// Credentials and scope of the signer.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// Access key id (`AWS_ACCESS_KEY_ID`).
    pub access_key: String,
    /// Secret access key (`AWS_SECRET_ACCESS_KEY`).
    pub secret_key: String,
    /// Region of the credential scope, e.g. `us-east-1` (Garage: `garage`).
    pub region: String,
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new().chain_update(&ipad).chain_update(data).finalize();
    Sha256::new().chain_update(&opad).chain_update(inner).finalize().into()
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Percent-encodes a path for the canonical URI (RFC 3986 unreserved kept, `/` kept): S3 encodes
/// each path segment once.
pub fn uri_encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The canonical request. `headers` are (lower-case name, trimmed value), sorted by name;
/// `query` is the already canonical query string (empty for none).
pub fn canonical_request(
    method: &str,
    canonical_uri: &str,
    query: &str,
    headers: &[(&str, &str)],
    payload_hash: &str,
) -> String {
    let mut s = format!("{method}\n{canonical_uri}\n{query}\n");
    for (name, value) in headers {
        s.push_str(&format!("{name}:{value}\n"));
    }
    s.push('\n');
    s.push_str(&signed_headers(headers));
    s.push('\n');
    s.push_str(payload_hash);
    s
}

/// `host;x-amz-date;...`: the names of the signed headers.
pub fn signed_headers(headers: &[(&str, &str)]) -> String {
    headers.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(";")
}

/// The string to sign for a canonical request at `amz_date` (`YYYYMMDDTHHMMSSZ`).
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    let hash = hex(&Sha256::digest(canonical_request.as_bytes()));
    format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hash}")
}

/// The credential scope `date/region/service/aws4_request`.
pub fn scope(date: &str, region: &str, service: &str) -> String {
    format!("{date}/{region}/{service}/aws4_request")
}

/// The signing key for a day, region and service.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k_date = hmac_sha256(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac_sha256(&k_date, region.as_bytes());
    let k_service = hmac_sha256(&k_region, service.as_bytes());
    hmac_sha256(&k_service, b"aws4_request")
}

/// The headers of one signed S3 request: `(x-amz-date, x-amz-content-sha256, Authorization)`.
/// `host` is the `Host` header value; `path` the unencoded request path (`/bucket/key`).
pub fn sign_request(
    creds: &Credentials,
    method: &str,
    host: &str,
    path: &str,
    amz_date: &str,
) -> (String, &'static str, String) {
    let date = amz_date.get(..8).unwrap_or(amz_date);
    let headers =
        [("host", host), ("x-amz-content-sha256", UNSIGNED_PAYLOAD), ("x-amz-date", amz_date)];
    let creq = canonical_request(method, &uri_encode_path(path), "", &headers, UNSIGNED_PAYLOAD);
    let scope = scope(date, &creds.region, "s3");
    let sts = string_to_sign(amz_date, &scope, &creq);
    let sig = hex(&hmac_sha256(
        &signing_key(&creds.secret_key, date, &creds.region, "s3"),
        sts.as_bytes(),
    ));
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope},SignedHeaders={},Signature={sig}",
        creds.access_key,
        signed_headers(&headers)
    );
    (amz_date.to_owned(), UNSIGNED_PAYLOAD, auth)
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time in seconds (UTC, proleptic Gregorian).
pub fn amz_date(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex(&mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        // Case 6: a key longer than the block is hashed first.
        let mac =
            hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First");
        assert_eq!(hex(&mac), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    }

    /// The GET Object example of the S3 API reference (examplebucket, test.txt, Range 0-9).
    #[test]
    fn signature_matches_the_s3_get_object_example() {
        let headers = [
            ("host", "examplebucket.s3.amazonaws.com"),
            ("range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
        ];
        let creq = canonical_request("GET", "/test.txt", "", &headers, EMPTY_SHA256);
        assert_eq!(
            creq,
            "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n\
             x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
             x-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let scope = scope("20130524", "us-east-1", "s3");
        let sts = string_to_sign("20130524T000000Z", &scope, &creq);
        assert_eq!(
            sts,
            "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n\
             7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
        );
        let key = signing_key(SECRET, "20130524", "us-east-1", "s3");
        assert_eq!(
            hex(&hmac_sha256(&key, sts.as_bytes())),
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn sign_request_builds_the_authorization_header() {
        let creds = Credentials {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: SECRET.into(),
            region: "us-east-1".into(),
        };
        let (date, payload, auth) =
            sign_request(&creds, "PUT", "127.0.0.1:9000", "/bench/a b", "20130524T000000Z");
        assert_eq!(date, "20130524T000000Z");
        assert_eq!(payload, "UNSIGNED-PAYLOAD");
        assert!(auth.starts_with(
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;x-amz-content-sha256;x-amz-date,Signature="
        ));
        assert_eq!(auth.rsplit('=').next().map(str::len), Some(64));
    }

    #[test]
    fn paths_and_dates_are_canonical() {
        assert_eq!(uri_encode_path("/b/a b/ü~x"), "/b/a%20b/%C3%BC~x");
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(1_440_938_160), "20150830T123600Z");
        assert_eq!(amz_date(1_795_564_801), "20261125T000001Z");
    }
}
