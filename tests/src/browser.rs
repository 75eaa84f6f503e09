//! A real headless Chromium driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`), for the console's browser tests. A missing browser
//! fails the test, naming the package.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free port, with one Chromium session; both end with it.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: TempDir,
}

/// A fresh profile folder, removed at the end.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Browser {
    pub async fn start() -> Self {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} is required for the browser tests: apt-get install -y {package} \
                 (scripts/test installs it)"
            );
        }
        let port = crate::servers::free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = TempDir(std::env::temp_dir().join(format!(
            "wa-console-chromium-{}",
            uuid::Uuid::new_v4().simple()
        )));
        std::fs::create_dir_all(&profile.0).expect("profile folder");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,1200",
                    format!("--user-data-dir={}", profile.0.display()),
                ]
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let client = crate::eventually(
            "chromedriver to start a session",
            Duration::from_secs(30),
            || {
                let capabilities = capabilities.clone();
                let url = url.clone();
                async move {
                    // chromedriver listens on loopback: plain HTTP, no TLS stack.
                    ClientBuilder::new(HttpConnector::new())
                        .capabilities(capabilities)
                        .connect(&url)
                        .await
                        .map_err(|e| e.to_string())
                }
            },
        )
        .await;
        Self {
            client,
            driver,
            _profile: profile,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The text of the element with this id. Found and read again when the
    /// page was replaced in between (the overview reloads itself every
    /// refresh interval), which leaves the element found first stale.
    pub async fn text(&self, id: &str) -> String {
        crate::eventually(
            &format!("the text of #{id}"),
            Duration::from_secs(10),
            || async {
                let element = self
                    .client
                    .find(Locator::Id(id))
                    .await
                    .map_err(|e| format!("#{id}: {e}"))?;
                element
                    .text()
                    .await
                    .map_err(|e| format!("#{id}'s text: {e}"))
            },
        )
        .await
    }

    /// True when the page has an element with this id.
    pub async fn has(&self, id: &str) -> bool {
        self.client.find(Locator::Id(id)).await.is_ok()
    }

    /// Clicks a button or link and waits for the page it leads to: the old
    /// page's root goes stale (so no element of the old page is read after).
    pub async fn click(&self, id: &str) {
        let old_page = self
            .client
            .find(Locator::Css("html"))
            .await
            .expect("a page");
        self.client
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("#{id}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click #{id}: {e}"));
        crate::eventually(
            &format!("the page after #{id}"),
            Duration::from_secs(30),
            || {
                let old_page = old_page.clone();
                async move {
                    match old_page.tag_name().await {
                        Err(_) => Ok(()),
                        Ok(_) => Err("still on the old page".to_owned()),
                    }
                }
            },
        )
        .await;
        self.client
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css("body"))
            .await
            .expect("the new page");
    }

    /// Replaces the value of the input with this id.
    pub async fn fill(&self, id: &str, value: &str) {
        let input = self
            .client
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("#{id}: {e}"));
        input.clear().await.expect("clear");
        input.send_keys(value).await.expect("type");
    }

    pub async fn select(&self, id: &str, value: &str) {
        self.client
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("#{id}: {e}"))
            .select_by_value(value)
            .await
            .unwrap_or_else(|e| panic!("select {value} in #{id}: {e}"));
    }

    pub async fn source(&self) -> String {
        self.client.source().await.expect("page source")
    }

    pub async fn path(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("url")
            .path()
            .to_owned()
    }

    /// Saves a screenshot under `target/console-screenshots/` (a test
    /// artifact, not committed) and returns where.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let folder = screenshot_folder();
        std::fs::create_dir_all(&folder).expect("screenshot folder");
        let path = folder.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.client
            .set_window_size(width, height)
            .await
            .expect("window size");
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

pub fn screenshot_folder() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")))
        .join("console-screenshots")
}
