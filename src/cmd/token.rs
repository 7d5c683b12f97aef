//! `identity-sidecar token`: a client for debugging inside a pod that has no curl. Fetches a token
//! from a running sidecar (or any managed-identity endpoint) the way an SDK would, and prints the
//! JSON, the bare token (`--raw`) or its decoded claims (`--decode`).
use std::process::ExitCode;
use std::time::Duration;

use crate::core::jwt;

/// The protocol `token` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavor {
    /// IMDS: `GET /metadata/identity/oauth2/token` with `Metadata: true`.
    Imds,
    /// App Service 2019-08-01: `IDENTITY_ENDPOINT` with `X-IDENTITY-HEADER`.
    AppService,
}

#[derive(clap::Args, Debug, Clone)]
pub struct TokenArgs {
    /// Resource to get a token for (a v1 resource, e.g. https://management.azure.com).
    #[arg(long, default_value = "https://management.azure.com")]
    pub resource: String,

    /// User-assigned identity to select (client id). [default: the sidecar's own]
    #[arg(long)]
    pub client_id: Option<String>,

    /// Protocol to speak. [default: app-service when IDENTITY_ENDPOINT is set, else imds]
    #[arg(long, value_enum)]
    pub flavor: Option<Flavor>,

    /// Endpoint base. [default: IDENTITY_ENDPOINT for app-service; AZURE_POD_IDENTITY_AUTHORITY_HOST
    /// or http://169.254.169.254 for imds]
    #[arg(long)]
    pub endpoint: Option<String>,

    /// Secret for the App Service flavor. [default: IDENTITY_HEADER]
    #[arg(long, env = "IDENTITY_HEADER", hide_env_values = true)]
    pub identity_header: Option<String>,

    /// Print only the access token.
    #[arg(long, conflicts_with = "decode")]
    pub raw: bool,

    /// Print the access token's decoded header and claims (not verified).
    #[arg(long)]
    pub decode: bool,
}

pub fn run(args: TokenArgs) -> ExitCode {
    let flavor = args.flavor.unwrap_or_else(|| {
        if std::env::var_os("IDENTITY_ENDPOINT").is_some() {
            Flavor::AppService
        } else {
            Flavor::Imds
        }
    });
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let result = rt.block_on(fetch(&args, flavor));
    let body = match result {
        Ok(b) => b,
        Err(msg) => return fail(&msg),
    };
    let token = body
        .get("access_token")
        .and_then(|t| t.as_str())
        .unwrap_or_default();
    if args.raw {
        println!("{token}");
    } else if args.decode {
        match decode_jwt(token) {
            Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
            Err(e) => return fail(&format!("the access token is not a readable JWT: {e}")),
        }
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(&body).unwrap_or_default()
        );
    }
    ExitCode::SUCCESS
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("identity-sidecar token: {msg}");
    ExitCode::FAILURE
}

async fn fetch(args: &TokenArgs, flavor: Flavor) -> Result<serde_json::Value, String> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("cannot create the HTTP client: {e}"))?;
    let mut query = vec![("resource", args.resource.clone())];
    let request = if flavor == Flavor::AppService {
        let endpoint = args
            .endpoint
            .clone()
            .or_else(|| std::env::var("IDENTITY_ENDPOINT").ok())
            .ok_or("no endpoint: pass --endpoint or set IDENTITY_ENDPOINT")?;
        let secret = args
            .identity_header
            .clone()
            .ok_or("no secret: pass --identity-header or set IDENTITY_HEADER")?;
        query.insert(0, ("api-version", "2019-08-01".into()));
        if let Some(c) = &args.client_id {
            query.push(("client_id", c.clone()));
        }
        http.get(endpoint)
            .query(&query)
            .header("X-IDENTITY-HEADER", secret)
    } else {
        let base = args
            .endpoint
            .clone()
            .or_else(|| std::env::var("AZURE_POD_IDENTITY_AUTHORITY_HOST").ok())
            .unwrap_or_else(|| "http://169.254.169.254".into());
        query.insert(0, ("api-version", "2018-02-01".into()));
        if let Some(c) = &args.client_id {
            query.push(("client_id", c.clone()));
        }
        let url = format!(
            "{}/metadata/identity/oauth2/token",
            base.trim_end_matches('/')
        );
        http.get(url).query(&query).header("Metadata", "true")
    };
    let resp = request
        .send()
        .await
        .map_err(|e| format!("no answer from the endpoint: {e}"))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| format!("reading the answer failed: {e}"))?;
    let body: serde_json::Value = serde_json::from_str(&text).map_err(|_| {
        format!(
            "HTTP {status}, not JSON: {}",
            text.chars().take(300).collect::<String>()
        )
    })?;
    if !status.is_success() {
        let err = body
            .get("error")
            .and_then(|v| v.as_str())
            .unwrap_or("error");
        let desc = body
            .get("error_description")
            .or_else(|| body.get("message"))
            .and_then(|v| v.as_str())
            .unwrap_or("");
        return Err(format!("HTTP {}: {err}: {desc}", status.as_u16()));
    }
    if body.get("access_token").and_then(|t| t.as_str()).is_none() {
        return Err("the answer has no access_token".into());
    }
    Ok(body)
}

/// Header and claims of a JWT, without verifying it.
pub fn decode_jwt(token: &str) -> Result<serde_json::Value, String> {
    let parts = jwt::split(token)?;
    let header: serde_json::Value = jwt::decode_part(parts.header, "header")?;
    let claims: serde_json::Value = jwt::decode_part(parts.payload, "payload")?;
    Ok(serde_json::json!({ "header": header, "claims": claims }))
}
