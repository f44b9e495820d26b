//! `get`, `status`, `secret set` and `logout`: one request each.

use crate::cli::{GetArgs, LogoutArgs};
use crate::conn::Daemon;
use crate::output::{self, write_stdout};
use crate::{input, Failure};
use secrecy::ExposeSecret;
use std::time::{SystemTime, UNIX_EPOCH};
use tokctl_proto::{
    printable, ApiError, ErrorCode, LogoutRequest, LogoutResponse, OkResponse, SecretRequest,
    StatusResponse, TokenResponse,
};

/// `tokctl get`: the hot path, one connection and one request.
pub async fn get(args: &GetArgs) -> Result<(), Failure> {
    let path = format!("/token?{}", args.query().to_query_string());
    let token: TokenResponse = Daemon::connect().await?.get(&path).await?;
    write_stdout(&output::render_token(&token, args.format)?)?;
    Ok(())
}

/// `tokctl status`: JSON as the daemon sent it, or a table for a person.
pub async fn status(json: bool, color: bool) -> Result<(), Failure> {
    let body = Daemon::connect().await?.get_bytes("/status").await?;
    let status: StatusResponse = serde_json::from_slice(&body).map_err(|_| {
        ApiError::new(
            ErrorCode::Other,
            "tokctld sent a status this tokctl cannot read; are client and daemon the same version?",
        )
    })?;
    if json {
        // Passed through unchanged, so fields from a newer daemon are not lost.
        let text = String::from_utf8_lossy(&body);
        output::write_json(&text)?;
    } else {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        write_stdout(&output::render_status(&status, now, color))?;
    }
    Ok(())
}

/// `tokctl secret set PROFILE`: the secret comes from stdin only.
pub async fn secret_set(profile: &str) -> Result<(), Failure> {
    let prompt = format!("Client secret for {}: ", printable(profile, 100));
    let secret = input::read_secret(&prompt, "client secret")?;
    let mut daemon = Daemon::connect().await?;
    let req = SecretRequest {
        profile: profile.to_owned(),
        secret: secret.expose_secret().to_owned(),
    };
    let resp: Result<OkResponse, _> = daemon.post("/secret", &req).await;
    let SecretRequest {
        secret: mut copy, ..
    } = req;
    secrecy::zeroize::Zeroize::zeroize(&mut copy);
    eprintln!("{}", printable(&resp?.message, 500));
    Ok(())
}

/// `tokctl logout PROFILE`.
pub async fn logout(args: &LogoutArgs) -> Result<(), Failure> {
    let req = LogoutRequest {
        profile: args.profile.clone(),
        revoke: !args.no_revoke,
    };
    let resp: LogoutResponse = Daemon::connect().await?.post("/logout", &req).await?;
    eprintln!("{}", printable(&resp.message, 500));
    Ok(())
}
