//! Dashboard helpers: the server over HTTPS, and logging in without a browser.
#![allow(dead_code)]

use super::Server;

/// The server with `config` (which sets `listen_tls`), `base` its HTTPS
/// address and `http` a client that trusts its CA and follows no redirect.
pub async fn https_server(config: &str) -> Server {
    let mut s = Server::start(Some(config)).await;
    let h = s.handle.as_ref().unwrap();
    let tls = h.tls_addr().expect("listen_tls in the config");
    let pem = std::fs::read(h.ca_file().unwrap()).unwrap();
    s.http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    s.base = format!("https://127.0.0.1:{}", tls.port());
    s
}

/// `Set-Cookie` name=value pairs of a response.
pub fn cookies(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .map(str::to_owned)
        .collect()
}

/// GET the login page: (its login cookie, the form's csrf).
pub async fn login_form(s: &Server) -> (String, String) {
    let r = s.http.get(s.url("/ui/login")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let cookie = cookies(&r).into_iter().next().unwrap();
    let page = r.text().await.unwrap();
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).unwrap()[..64].to_owned();
    (cookie, csrf)
}

/// POST the login form (with its csrf) and `form`.
pub async fn post_login(s: &Server, form: &[(&str, &str)]) -> reqwest::Response {
    let (cookie, csrf) = login_form(s).await;
    let mut f: Vec<(&str, &str)> = vec![("csrf", &csrf)];
    f.extend_from_slice(form);
    s.http
        .post(s.url("/ui/login"))
        .header("cookie", cookie)
        .form(&f)
        .send()
        .await
        .unwrap()
}

/// Log in with the admin token: the `landfall_session=...` cookie.
pub async fn admin_session(s: &Server) -> String {
    let r = post_login(s, &[("token", &s.admin_token())]).await;
    assert_eq!(r.status(), 303);
    cookies(&r)
        .into_iter()
        .find(|c| c.starts_with("landfall_session="))
        .unwrap()
}
