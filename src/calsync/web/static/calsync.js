// calsync pages: small progressive enhancements; every form also works without this file.
(function () {
  "use strict";
  function ready(fn) {
    if (document.readyState !== "loading") { fn(); } else { document.addEventListener("DOMContentLoaded", fn); }
  }
  ready(function () {
    // "Copy link": copy the feed link and say so in the live region.
    document.querySelectorAll("[data-copy]").forEach(function (button) {
      button.hidden = false;
      button.addEventListener("click", function () {
        var field = document.getElementById(button.getAttribute("data-copy"));
        var status = document.getElementById(button.getAttribute("data-status"));
        var done = function (ok) { if (status) { status.textContent = ok ? "Link copied." : "Select the link and copy it."; } };
        field.select();
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(field.value).then(function () { done(true); }, function () { done(document.execCommand("copy")); });
        } else {
          done(document.execCommand("copy"));
        }
      });
    });
    // Disclosure buttons: forms start closed unless the server opened them (an error).
    document.querySelectorAll("[data-disclose]").forEach(function (button) {
      var panel = document.getElementById(button.getAttribute("aria-controls"));
      if (!panel) { return; }
      var open = panel.hasAttribute("data-open");
      panel.hidden = !open;
      button.setAttribute("aria-expanded", open ? "true" : "false");
      button.addEventListener("click", function () {
        var nowOpen = panel.hidden;
        panel.hidden = !nowOpen;
        button.setAttribute("aria-expanded", nowOpen ? "true" : "false");
        if (nowOpen) { var first = panel.querySelector("input:not([type=hidden])"); if (first) { first.focus(); } }
      });
    });
    // Saved when changed: checkboxes marked data-autosave submit their form.
    document.querySelectorAll("[data-autosave]").forEach(function (box) {
      var form = box.form;
      form.querySelectorAll("[data-noscript-save]").forEach(function (b) { b.hidden = true; });
      box.addEventListener("change", function () { form.requestSubmit ? form.requestSubmit() : form.submit(); });
    });
  });
})();
