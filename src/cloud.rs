//! The Azure clouds the sidecar knows by name: the public cloud and the sovereign ones.
//!
//! A cloud gives the default authority host (`--cloud` / `AZURE_ENVIRONMENT`, the names the SDKs
//! and the Azure Workload Identity webhook use, in any case), and `doctor` uses the hosts below to
//! recognise which cloud a federated token's issuer belongs to and explain a mismatch
//! (azure-workload-identity #566 and #401: wrong authority in Gov/China clouds).
//!
//! Issuers differ from authorities: AKS clusters issue service-account tokens from
//! `{region}.oic.prod-aks.azure.{com,us,cn}` (older public clusters `oidc.prod-aks.azure.com`),
//! and Entra ID in China signs its own tokens as `login.partner.microsoftonline.cn` although its
//! authority is `login.chinacloudapi.cn` (external-secrets #5591).
use reqwest::Url;

/// An Azure cloud, named as `AZURE_ENVIRONMENT` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Cloud {
    /// Azure (global): `login.microsoftonline.com`.
    #[value(name = "AzurePublicCloud")]
    Public,
    /// Azure US Government: `login.microsoftonline.us`.
    #[value(name = "AzureUSGovernment")]
    UsGovernment,
    /// Azure operated by 21Vianet (China): `login.chinacloudapi.cn`.
    #[value(name = "AzureChinaCloud")]
    China,
}

impl Cloud {
    pub const ALL: [Cloud; 3] = [Cloud::Public, Cloud::UsGovernment, Cloud::China];

    /// The name `AZURE_ENVIRONMENT` uses.
    pub fn name(self) -> &'static str {
        match self {
            Cloud::Public => "AzurePublicCloud",
            Cloud::UsGovernment => "AzureUSGovernment",
            Cloud::China => "AzureChinaCloud",
        }
    }

    /// The Entra ID authority host.
    pub fn authority_host(self) -> &'static str {
        match self {
            Cloud::Public => "login.microsoftonline.com",
            Cloud::UsGovernment => "login.microsoftonline.us",
            Cloud::China => "login.chinacloudapi.cn",
        }
    }

    /// The authority URL, with the trailing slash the token URL is joined to.
    pub fn authority(self) -> String {
        format!("https://{}/", self.authority_host())
    }

    /// Host suffixes of the OIDC issuers AKS clusters in this cloud use
    /// (`https://{region}.oic.prod-aks.azure.com/{tenant}/{guid}/`).
    pub fn aks_issuer_suffixes(self) -> &'static [&'static str] {
        match self {
            Cloud::Public => &[".oic.prod-aks.azure.com", "oidc.prod-aks.azure.com"],
            Cloud::UsGovernment => &[".oic.prod-aks.azure.us"],
            Cloud::China => &[".oic.prod-aks.azure.cn"],
        }
    }

    /// Hosts Entra ID of this cloud signs its own tokens as (an Entra token used as the federated
    /// assertion). China's differs from its authority host. (`sts.windows.net`, the v1 issuer of
    /// both the public and the US Government cloud, names no single cloud and is left out.)
    pub fn entra_issuer_hosts(self) -> &'static [&'static str] {
        match self {
            Cloud::Public => &["login.microsoftonline.com"],
            Cloud::UsGovernment => &["login.microsoftonline.us"],
            Cloud::China => &[
                "login.partner.microsoftonline.cn",
                "login.chinacloudapi.cn",
                "sts.chinacloudapi.cn",
            ],
        }
    }

    /// Typical issuers of federated tokens in this cloud, for messages.
    pub fn typical_issuers(self) -> String {
        let aks = self.aks_issuer_suffixes()[0].trim_start_matches('.');
        let entra = self.entra_issuer_hosts()[0];
        format!(
            "https://<region>.{aks}/<tenant>/<guid>/ (AKS), https://{entra}/<tenant>/v2.0 (Entra ID)"
        )
    }

    /// The cloud whose authority host `authority` is, if any.
    pub fn of_authority(authority: &Url) -> Option<Cloud> {
        let host = authority.host_str()?;
        Cloud::ALL
            .into_iter()
            .find(|c| host.eq_ignore_ascii_case(c.authority_host()))
    }

    /// The cloud a federated token's `iss` belongs to, if its host is one this module knows.
    pub fn of_issuer(iss: &str) -> Option<Cloud> {
        let url = Url::parse(iss).ok()?;
        let host = url.host_str()?.to_ascii_lowercase();
        Cloud::ALL.into_iter().find(|c| {
            c.aks_issuer_suffixes()
                .iter()
                .any(|s| host.ends_with(s) || host == s.trim_start_matches('.'))
                || c.entra_issuer_hosts().iter().any(|h| host == *h)
        })
    }

    /// Parses a cloud name in any case (`azureusgovernment` too).
    pub fn parse(text: &str) -> Result<Cloud, String> {
        let t = text.trim();
        <Cloud as clap::ValueEnum>::from_str(t, true).map_err(|_| {
            format!(
                "{t:?} is not a cloud this sidecar knows: use AzurePublicCloud, AzureUSGovernment \
                 or AzureChinaCloud (any case), or set --authority-host / AZURE_AUTHORITY_HOST"
            )
        })
    }
}

impl std::fmt::Display for Cloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What `doctor` says about a federated token issued by `iss` sent to `authority`: `None` when
/// nothing is known to be wrong, else a warning and its explanation.
pub fn issuer_advice(authority: &Url, iss: &str) -> Option<String> {
    let target = Cloud::of_authority(authority)?;
    let from = Cloud::of_issuer(iss)?;
    if from == target {
        return None;
    }
    Some(format!(
        "the federated token's issuer {iss} belongs to {from}, but the authority {authority} is \
         {target}'s: Entra ID only trusts federated credentials in its own cloud. Set --cloud / \
         AZURE_ENVIRONMENT to {from} (authority https://{}/), or fix --authority-host / \
         AZURE_AUTHORITY_HOST. Typical issuers in {target}: {}",
        from.authority_host(),
        target.typical_issuers()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_in_any_case() {
        assert_eq!(Cloud::parse("AzureUSGovernment"), Ok(Cloud::UsGovernment));
        assert_eq!(Cloud::parse("azurechinacloud"), Ok(Cloud::China));
        assert_eq!(Cloud::parse(" AZUREPUBLICCLOUD "), Ok(Cloud::Public));
        assert!(Cloud::parse("AzureGermanCloud").is_err());
        for c in Cloud::ALL {
            assert_eq!(Cloud::parse(c.name()), Ok(c));
        }
    }

    #[test]
    fn each_cloud_has_its_authority() {
        let hosts: Vec<_> = Cloud::ALL.iter().map(|c| c.authority()).collect();
        assert_eq!(
            hosts,
            [
                "https://login.microsoftonline.com/",
                "https://login.microsoftonline.us/",
                "https://login.chinacloudapi.cn/"
            ]
        );
    }

    #[test]
    fn issuers_are_recognised_per_cloud() {
        let of = Cloud::of_issuer;
        assert_eq!(
            of("https://eastus.oic.prod-aks.azure.com/t/g/"),
            Some(Cloud::Public)
        );
        assert_eq!(
            of("https://usgovvirginia.oic.prod-aks.azure.us/t/g/"),
            Some(Cloud::UsGovernment)
        );
        assert_eq!(
            of("https://chinanorth2.oic.prod-aks.azure.cn/t/g/"),
            Some(Cloud::China)
        );
        // China's Entra ID issues as login.partner.microsoftonline.cn, not its authority host.
        assert_eq!(
            of("https://login.partner.microsoftonline.cn/t/v2.0"),
            Some(Cloud::China)
        );
        assert_eq!(of("https://sts.windows.net/t/"), None);
        assert_eq!(of("https://kubernetes.default.svc"), None);
    }

    #[test]
    fn a_cross_cloud_issuer_is_explained() {
        let public = Url::parse("https://login.microsoftonline.com/").expect("url");
        let china = Url::parse("https://login.chinacloudapi.cn/").expect("url");
        let cn_issuer = "https://chinanorth2.oic.prod-aks.azure.cn/t/g/";
        let advice = issuer_advice(&public, cn_issuer).expect("mismatch");
        assert!(advice.contains("AzureChinaCloud") && advice.contains("login.chinacloudapi.cn"));
        assert_eq!(issuer_advice(&china, cn_issuer), None);
        assert_eq!(
            issuer_advice(&china, "https://login.partner.microsoftonline.cn/t/v2.0"),
            None
        );
        let custom = Url::parse("https://127.0.0.1:1/").expect("url");
        assert_eq!(issuer_advice(&custom, cn_issuer), None);
    }
}
