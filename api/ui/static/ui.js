// Auto-refresh for the views that ask for it (<body data-refresh="seconds">): reloads while the
// box is ticked and the tab is visible. The choice is remembered in this browser.
(function () {
  "use strict";
  var seconds = Number(document.body.dataset.refresh || 0);
  var box = document.getElementById("auto-refresh");
  if (!seconds || !box) { return; }
  var key = "relight-auto-refresh";
  box.checked = window.localStorage.getItem(key) !== "off";
  box.addEventListener("change", function () {
    window.localStorage.setItem(key, box.checked ? "on" : "off");
  });
  window.setInterval(function () {
    if (box.checked && document.visibilityState === "visible") { window.location.reload(); }
  }, seconds * 1000);
})();
