//! `s3://bucket/key` arguments of `sluice run transform`.
//!
//! The key is everything after the first `/` following the bucket, taken as it is, as the AWS
//! CLI takes it and as transform-s3 takes the key of a direct invoke: spaces, `+`, `%` and any
//! Unicode are part of the key, nothing is URL-decoded.

use sluice::Error;
use sluice::transform::SourceObject;

/// The object `url` names. Errors name the argument and what is wrong with it.
pub fn parse(url: &str) -> Result<SourceObject, Error> {
    let bad = |why: &str| Error::InvalidSpec {
        message: format!("{url:?} is not s3://bucket/key: {why}"),
    };
    let Some(rest) = url.strip_prefix("s3://") else {
        return Err(bad("it does not start with s3://"));
    };
    let Some((bucket, key)) = rest.split_once('/') else {
        return Err(bad("no key after the bucket"));
    };
    if bucket.is_empty() {
        return Err(bad("no bucket"));
    }
    if key.is_empty() {
        return Err(bad("no key after the bucket"));
    }
    if key.len() > 1024 {
        return Err(bad("the key is over S3's 1024 bytes"));
    }
    sluice::job::validate_bucket("the bucket", bucket).map_err(|e| match e {
        Error::InvalidSpec { message } => bad(&message),
        other => other,
    })?;
    Ok(SourceObject {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        e_tag: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_taken_as_they_are() {
        for (url, key) in [
            ("s3://lake/incoming/a.csv", "incoming/a.csv"),
            (
                "s3://lake/incoming/parking violations 2026.csv.gz",
                "incoming/parking violations 2026.csv.gz",
            ),
            ("s3://lake/a+b%20c", "a+b%20c"),
            ("s3://lake/données/été 2026/ü.csv", "données/été 2026/ü.csv"),
            ("s3://lake//double//slash/", "/double//slash/"),
        ] {
            let o = parse(url).unwrap();
            assert_eq!((o.bucket.as_str(), o.key.as_str()), ("lake", key), "{url}");
        }
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, needle) in [
            ("lake/a.csv", "does not start with s3://"),
            ("https://lake/a.csv", "does not start with s3://"),
            ("s3://lake", "no key after the bucket"),
            ("s3://lake/", "no key after the bucket"),
            ("s3:///a.csv", "no bucket"),
            (
                "s3://Lake_1/a.csv",
                "the bucket \"Lake_1\" is not a valid bucket name",
            ),
        ] {
            let e = parse(url).unwrap_err().to_string();
            assert!(e.contains(needle), "{url}: {e}");
            assert!(
                e.contains(&format!("{url:?} is not s3://bucket/key")),
                "{e}"
            );
        }
    }
}
