//! The console in a real browser: Debian's headless Chromium, driven through chromedriver
//! (WebDriver), against a real `opshost serve` of the orders example on 127.0.0.1, with the
//! payments service it charges. Each test signs in, clicks and types as an operator would, and
//! reads what the page shows; the API is used only to act as another client or to check an
//! outcome. Screenshots go to `target/console-screenshots/`.
//!
//! Chromium and chromedriver must be installed (`apt-get install chromium chromium-driver`);
//! `.ci/run` installs them. The tests take turns: two cores run one browser well.

// Shared with the other command-line test binaries, which start hosts in ways this one does not.
#[allow(dead_code)]
mod common;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{payments, root, token};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// One test at a time holds the browser.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The token the host's console offers in dev mode, and the tests paste.
fn operator_token() -> String {
    token(&["orders.write", "orders.read", "opshost.admin"])
}

/// `opshost serve` of the orders example in dev mode (the console offers a token), on a data
/// directory of its own; killed when dropped.
struct Host {
    child: Child,
    url: String,
    /// The token the console offers.
    dev_token: String,
    _data: tempfile::TempDir,
}

impl Host {
    fn start() -> Self {
        Self::with_config(&root().join("contracts/orders.deploy.toml"))
    }

    fn with_config(config: &std::path::Path) -> Self {
        payments();
        let data = tempfile::tempdir().expect("a data directory");
        let dev_token = operator_token();
        let (child, url) = common::serve_with(
            config,
            &["--data-dir".as_ref(), data.path().as_os_str()],
            "127.0.0.1:0",
            &[("OPSHOST_CONSOLE_DEV_TOKEN", &dev_token)],
        );
        Self {
            child,
            url,
            dev_token,
            _data: data,
        }
    }

    /// Starts an order whose first three charges fail, so that it runs for seconds (and its
    /// fulfilment job dies unless retried).
    async fn start_running_order(&self, order_id: &str) -> String {
        payments().fail_order(order_id, 3);
        self.start_order(order_id).await
    }

    /// Starts an order of one item as another client would, through the API, keyed by its
    /// order id.
    async fn start_order(&self, order_id: &str) -> String {
        let request = opshost_tests::net::http()
            .post(format!("{}/v1/operations/Orders.Process", self.url))
            .header("idempotency-key", order_id)
            .json(&json!({
                "orderId": order_id,
                "lineItems": [{ "sku": "BOOK-1", "quantity": 2, "unitPriceCents": 1250 }]
            }));
        let started = Self::send(request).await;
        started["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id: {started}"))
            .to_owned()
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = opshost_tests::net::http().request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        Self::send(request).await
    }

    /// Sends `request` as the operator; answers the JSON of a success.
    async fn send(request: reqwest::RequestBuilder) -> Value {
        let response = request
            .bearer_auth(operator_token())
            .send()
            .await
            .expect("the host answers");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{status} {body}");
        body
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Headless Chromium under chromedriver, with a profile of its own; both stopped when dropped.
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn open() -> Self {
        let chromedriver = PathBuf::from("/usr/bin/chromedriver");
        assert!(
            chromedriver.exists(),
            "the console tests need Chromium and chromedriver: apt-get install chromium chromium-driver"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        // A process group of its own, so that its browsers go with it.
        let driver = Command::new(&chromedriver)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().expect("a profile directory");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--disable-quic",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a WebDriver session in Chromium");
        Self {
            client,
            driver,
            _profile: profile,
        }
    }

    /// A browser signed in to `host`'s console with the operator's token.
    async fn signed_in(host: &Host) -> Self {
        let browser = Self::open().await;
        browser.sign_in(host, &operator_token()).await;
        browser
    }

    /// Shows the console view at `route` (`/operations/…`, `/jobs?…`).
    async fn view(&self, host: &Host, route: &str) {
        self.goto(&format!("{}/console#{route}", host.url)).await;
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("the page loads");
    }

    /// The element at `css`, once there (up to 20 s).
    async fn find(&self, css: &str) -> Element {
        let found = self
            .client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await;
        match found {
            Ok(element) => element,
            Err(error) => {
                let url = self.client.current_url().await.map(|url| url.to_string());
                let shown = self.script("return document.body.innerText").await;
                panic!("no `{css}` on the page ({error}) at {url:?}; it shows:\n{shown}")
            }
        }
    }

    async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.expect("its text")
    }

    async fn type_into(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.expect("the field clears");
        field.send_keys(text).await.expect("the field takes keys");
    }

    /// Clicks the element at `css`, finding it again should the page have just redrawn it.
    async fn click(&self, css: &str) {
        for _ in 0..3 {
            match self.find(css).await.click().await {
                Ok(()) => return,
                Err(fantoccini::error::CmdError::Standard(error))
                    if error.error == fantoccini::error::ErrorStatus::StaleElementReference => {}
                Err(error) => panic!("cannot click `{css}`: {error}"),
            }
        }
        panic!("`{css}` was redrawn under every click");
    }

    async fn script(&self, script: &str) -> Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|error| panic!("script `{script}`: {error}"))
    }

    /// Waits up to 30 s for `script` to answer `true`.
    async fn until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.script(script).await != Value::Bool(true) {
            assert!(Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves the page as `target/console-screenshots/{name}.png`.
    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        let dir = root().join("target/console-screenshots");
        std::fs::create_dir_all(&dir).expect("the screenshot directory");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("the screenshot is saved");
    }

    /// Opens the console at `host` and signs in by pasting `token`.
    async fn sign_in(&self, host: &Host, token: &str) {
        self.goto(&format!("{}/console", host.url)).await;
        self.type_into("#token", token).await;
        self.click("#sign-in").await;
        self.find("#nav:not([hidden])").await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and every Chromium process it started, even after a failed test.
        if let Ok(group) = i32::try_from(self.driver.id()) {
            // SAFETY: `kill` only sends a signal, to the group this test made.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
        let _ = self.driver.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_with_the_offered_development_token_shows_the_live_operations_list() {
    let _turn = TURN.lock().await;
    let host = Host::start();
    let browser = Browser::open().await;
    browser.goto(&format!("{}/console", host.url)).await;
    browser.click("#dev-token:not([hidden])").await;
    browser.find("#operations").await;
    // Said only once the list-watch stream's `ready` event came.
    browser
        .until(
            "the list-watch stream is open",
            "return document.querySelector('#live').textContent === 'live updates on'",
        )
        .await;
    let kept = browser
        .script("return sessionStorage.getItem('opshost.token')")
        .await;
    assert_eq!(kept, json!(host.dev_token));
    assert!(browser.text("#who").await.contains("acme"));
    // Jobs are shown to an operator.
    browser.find("#nav-jobs:not([hidden])").await;
    browser.click("#sign-out").await;
    browser.find("#token").await;
    let gone = browser
        .script("return sessionStorage.getItem('opshost.token')")
        .await;
    assert_eq!(gone, Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_named_and_nothing_is_kept() {
    let _turn = TURN.lock().await;
    let host = Host::start();
    let browser = Browser::open().await;
    browser.goto(&format!("{}/console", host.url)).await;
    browser.type_into("#token", "not-a-token").await;
    browser.click("#sign-in").await;
    let said = browser.text("#signin-error").await;
    assert!(said.starts_with("Not signed in:"), "{said}");
    let kept = browser
        .script("return sessionStorage.getItem('opshost.token')")
        .await;
    assert_eq!(kept, Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_started_from_the_form_shows_its_progress_through_every_step_to_the_result() {
    let _turn = TURN.lock().await;
    let host = Host::start();
    let browser = Browser::signed_in(&host).await;
    browser.view(&host, "/start/Orders.Process").await;
    browser.type_into("#f-orderId", "ord-from-form").await;
    browser.type_into("#f-lineItems-0-sku", "MUG-7").await;
    browser.type_into("#f-lineItems-0-quantity", "0").await;
    browser
        .type_into("#f-lineItems-0-unitPriceCents", "899")
        .await;
    browser.type_into("#start-key", "ord-from-form").await;
    // The input is checked against its schema before anything is sent.
    browser.click("#start").await;
    let problems = browser.text("#start-problems").await;
    assert!(
        problems.contains("$.lineItems[0].quantity must be at least 1"),
        "{problems}"
    );
    browser.type_into("#f-lineItems-0-quantity", "3").await;
    browser.click("#start").await;
    browser.find("#timeline").await;

    // The bar, sampled until the operation ends: it only moves forward, through the steps.
    let mut seen: Vec<f64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sample = browser
            .script(
                "const bar = document.getElementById('progress'); \
                 const state = document.querySelector('#state .state'); \
                 return [bar ? bar.value : 0, state ? state.textContent : ''];",
            )
            .await;
        let value = sample[0].as_f64().unwrap_or_default();
        if seen.last() != Some(&value) {
            seen.push(value);
        }
        if sample[1] == "completed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the order never completed: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(
        seen.windows(2).all(|pair| pair[0] <= pair[1]),
        "the bar went back: {seen:?}"
    );
    assert_eq!(seen.last(), Some(&1.0));
    let steps = seen
        .iter()
        .filter(|value| **value > 0.0 && **value < 1.0)
        .count();
    assert!(
        steps >= 2,
        "the bar did not move through the steps: {seen:?}"
    );
    let timeline = browser.text("#timeline").await;
    for step in ["reserving", "charging", "packing", "shipping"] {
        assert!(
            timeline.contains(step),
            "{step} not in the timeline:\n{timeline}"
        );
    }
    assert!(timeline.contains("completed"), "{timeline}");
    let result: Value = serde_json::from_str(&browser.text("#result").await).expect("JSON");
    assert_eq!(result["status"], "shipped");
    assert_eq!(result["totalCents"], 3 * 899);
    assert!(
        browser
            .text("#logs")
            .await
            .contains("Charging payment: done")
    );
    browser.screenshot("operation-completed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_cancelled_from_its_page_ends_cancelled() {
    let _turn = TURN.lock().await;
    let host = Host::start();
    let id = host.start_running_order("ord-to-cancel").await;
    let browser = Browser::signed_in(&host).await;
    browser.view(&host, &format!("/operations/{id}")).await;
    browser.click("#cancel").await;
    let question = browser.text("#confirm-text").await;
    assert_eq!(question, format!("Cancel operation {id}?"));
    browser.click("#confirm-yes").await;
    browser
        .until(
            "the page shows the order cancelled",
            "const state = document.querySelector('#state .state'); \
             return state !== null && state.textContent === 'cancelled';",
        )
        .await;
    assert!(
        browser.client.find(Locator::Css("#cancel")).await.is_err(),
        "no cancel button on an ended operation"
    );
    let stored = host
        .call(reqwest::Method::GET, &format!("/v1/operations/{id}"), None)
        .await;
    assert_eq!(stored["state"], "cancelled");
    browser.screenshot("operation-cancelled").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_started_by_another_client_appears_in_the_list_without_a_reload() {
    let _turn = TURN.lock().await;
    let host = Host::start();
    host.start_order("ord-before").await;
    let browser = Browser::signed_in(&host).await;
    browser.find("#rows tr[data-id]").await;
    browser
        .script("window.notReloaded = true; return true")
        .await;
    let id = host.start_order("ord-from-elsewhere").await;
    browser.find(&format!("#rows tr[data-id='{id}']")).await;
    browser
        .until(
            "the new order's row shows it completed",
            &format!(
                "const row = document.querySelector(\"#rows tr[data-id='{id}']\"); \
                 return row !== null && row.dataset.state === 'completed';"
            ),
        )
        .await;
    assert_eq!(
        browser.script("return window.notReloaded === true").await,
        json!(true),
        "the page was not reloaded"
    );
    browser.screenshot("operations-list").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_job_is_retried_from_the_jobs_page() {
    let _turn = TURN.lock().await;
    let host = Host::start();
    // Every attempt of this order's fulfilment fails to charge: its job dies.
    host.start_running_order("ord-dead-job").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let job = loop {
        let dead = host
            .call(reqwest::Method::GET, "/v1/jobs?state=dead", None)
            .await;
        if let Some(job) = dead["items"].as_array().and_then(|items| items.first()) {
            break job["id"].as_str().expect("a job id").to_owned();
        }
        assert!(Instant::now() < deadline, "the job never died");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let browser = Browser::signed_in(&host).await;
    browser.view(&host, "/jobs?queue=fulfillment").await;
    let row = format!("#job-rows tr[data-id='{job}']");
    browser.find(&format!("{row}[data-state='dead']")).await;
    assert!(browser.text(&row).await.contains("3 of 3"));
    browser.screenshot("jobs-dead").await;
    browser.click(&format!("{row} button.retry")).await;
    browser
        .until(
            "the retried job is queued again",
            &format!(
                "const row = document.querySelector(\"{row}\"); \
                 return row !== null && row.dataset.state !== 'dead';"
            ),
        )
        .await;
    let retried = host
        .call(reqwest::Method::GET, &format!("/v1/jobs/{job}"), None)
        .await;
    assert_ne!(retried["state"], "dead", "{retried}");
    assert!(browser.text("#status").await.contains("Retried job"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_cancel_over_a_filter_says_how_many_it_will_cancel_first() {
    let _turn = TURN.lock().await;
    let host = Host::start();
    let mut ids = Vec::new();
    for order in ["bulk-1", "bulk-2"] {
        ids.push(host.start_running_order(order).await);
    }
    host.start_order("kept-1").await;
    let browser = Browser::signed_in(&host).await;
    browser.view(&host, "/operations?idPrefix=bulk-").await;
    browser.find("#rows tr[data-id]").await;
    browser.click("#bulk-cancel").await;
    assert_eq!(
        browser.text("#confirm-text").await,
        "Cancel 2 operations matching this filter?"
    );
    browser.click("#confirm-yes").await;
    browser
        .until(
            "the console says what it cancelled",
            "return document.getElementById('status').textContent.startsWith('Cancelled 2 of 2')",
        )
        .await;
    for id in &ids {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let snapshot = host
                .call(reqwest::Method::GET, &format!("/v1/operations/{id}"), None)
                .await;
            if snapshot["state"] == "cancelled" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id} was never cancelled: {snapshot}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let kept = host
        .call(reqwest::Method::GET, "/v1/operations/kept-1@acme", None)
        .await;
    assert_ne!(kept["state"], "cancelled", "outside the filter: {kept}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_is_checked_against_its_schema_before_it_is_sent() {
    let _turn = TURN.lock().await;
    let host = Host::start();
    let id = host.start_running_order("ord-signalled").await;
    let browser = Browser::signed_in(&host).await;
    browser.view(&host, &format!("/operations/{id}")).await;
    browser.find("#signal-name").await;
    browser.type_into("#signal-input", r#"{"reason": 7}"#).await;
    browser.click("#send-signal").await;
    let problems = browser.text("#signal-problems").await;
    assert!(problems.contains("$.reason must be string"), "{problems}");
    browser.type_into("#signal-input", "{}").await;
    browser.click("#send-signal").await;
    browser
        .until(
            "the missing field is named",
            "return document.getElementById('signal-problems').textContent.includes('$.reason is required')",
        )
        .await;
    browser
        .type_into("#signal-input", r#"{"reason": "a gift"}"#)
        .await;
    browser.click("#send-signal").await;
    browser
        .until(
            "the console says the signal went",
            "return document.getElementById('status').textContent === 'Signal Expedite sent (#1)'",
        )
        .await;
    browser.screenshot("operation-signalled").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_control_is_labelled_and_signing_in_works_from_the_keyboard() {
    let _turn = TURN.lock().await;
    let host = Host::start();
    let browser = Browser::open().await;
    browser.goto(&format!("{}/console", host.url)).await;
    let token_field = browser.find("#token").await;
    token_field.click().await.expect("focus");
    token_field
        .send_keys(&operator_token())
        .await
        .expect("typing");
    // Tab to the sign-in button and press Enter.
    token_field.send_keys("\u{E004}").await.expect("Tab");
    browser
        .until(
            "the sign-in button has the focus",
            "return document.activeElement && document.activeElement.id === 'sign-in'",
        )
        .await;
    browser
        .client
        .active_element()
        .await
        .expect("the focused element")
        .send_keys("\u{E007}")
        .await
        .expect("Enter");
    browser.find("#operations").await;
    let unlabelled = "return [...document.querySelectorAll('input, select, textarea, button')] \
         .filter((control) => control.offsetParent !== null) \
         .filter((control) => !(control.labels && control.labels.length) \
             && !control.getAttribute('aria-label') && !control.textContent.trim()) \
         .map((control) => control.outerHTML)";
    for page in ["#/operations", "#/start/Orders.Process", "#/jobs"] {
        browser.goto(&format!("{}/console{page}", host.url)).await;
        browser.find("main h1").await;
        assert_eq!(
            browser.script(unlabelled).await,
            json!([]),
            "unlabelled controls on {page}"
        );
    }
}

/// A page of another origin, as a team's own web app would be: it starts an order with the
/// caller's token through CORS, then watches it with an `EventSource` and a watch token.
const FOREIGN_PAGE: &str = r#"<!doctype html><html><body><ol id="events"></ol><p id="done"></p>
<script>
const { host, token } = JSON.parse(document.getElementById('config').textContent);
(async () => {
  const auth = { Authorization: `Bearer ${token}` };
  const started = await fetch(`${host}/v1/operations/Orders.Process`, {
    method: 'POST',
    headers: { ...auth, 'Content-Type': 'application/json', 'Idempotency-Key': 'ord-cross-origin' },
    body: JSON.stringify({ orderId: 'ord-cross-origin', lineItems: [{ sku: 'PEN-1', quantity: 1, unitPriceCents: 150 }] }),
  }).then((response) => response.json());
  const minted = await fetch(`${host}/v1/operations/${started.id}/watch-token`, { method: 'POST', headers: auth })
    .then((response) => response.json());
  const source = new EventSource(`${host}${minted.events}`);
  for (const kind of ['accepted', 'started', 'progress', 'completed', 'failed', 'cancelled']) {
    source.addEventListener(kind, (event) => {
      const item = document.createElement('li');
      item.textContent = kind;
      document.getElementById('events').append(item);
      if (['completed', 'failed', 'cancelled'].includes(kind)) {
        source.close();
        document.getElementById('done').textContent = JSON.parse(event.data).state;
      }
    });
  }
})().catch((error) => { document.getElementById('done').textContent = `error: ${error}`; });
</script></body></html>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_another_origin_starts_and_watches_an_order_with_cors_and_a_watch_token() {
    let _turn = TURN.lock().await;
    let page_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port for the page");
    let origin = format!(
        "http://{}",
        page_listener.local_addr().expect("its address")
    );
    let dir = tempfile::tempdir().expect("a config directory");
    let config = orders_config_allowing(dir.path(), &origin);
    let host = Host::with_config(&config);
    let settings = json!({ "host": host.url, "token": operator_token() }).to_string();
    let html = FOREIGN_PAGE.replace(
        "<body>",
        &format!("<body><script type=\"application/json\" id=\"config\">{settings}</script>"),
    );
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let html = html.clone();
            async move { axum::response::Html(html) }
        }),
    );
    let page = tokio::spawn(async move { axum::serve(page_listener, app).await });

    let browser = Browser::open().await;
    browser.goto(&format!("{origin}/")).await;
    browser
        .until(
            "the foreign page saw the order end",
            "return document.getElementById('done').textContent !== ''",
        )
        .await;
    assert_eq!(browser.text("#done").await, "completed");
    let events = browser.text("#events").await;
    assert!(events.contains("progress"), "{events}");
    page.abort();
}

/// The orders example's config, written into `dir` with absolute paths, with `origin` allowed
/// to call the API.
fn orders_config_allowing(dir: &std::path::Path, origin: &str) -> PathBuf {
    let contracts = root().join("contracts");
    let original =
        std::fs::read_to_string(contracts.join("orders.deploy.toml")).expect("the orders config");
    let config = original
        .replace(
            "contract = \"orders_service.manifest.json\"",
            &format!(
                "contract = \"{}\"",
                contracts.join("orders_service.manifest.json").display()
            ),
        )
        .replace("\"../target/", &format!("\"{}/target/", root().display()))
        .replace(
            "{ file = \"payments.token\" }",
            &format!(
                "{{ file = \"{}\" }}",
                contracts.join("payments.token").display()
            ),
        )
        .replace(
            "listen = \"127.0.0.1:8080\"",
            &format!("listen = \"127.0.0.1:8080\"\ncors_origins = [\"{origin}\"]"),
        );
    assert!(config.contains("cors_origins"), "the config changed shape");
    let path = dir.join("orders.deploy.toml");
    std::fs::write(&path, config).expect("the config is written");
    path
}
