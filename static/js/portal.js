// Small progressive enhancements; every page works without them.
document.documentElement.classList.add("js");
// The header's menu button (phones): shows and hides the navigation.
document.addEventListener("click", (event) => {
  const toggle = event.target.closest("[data-menu-toggle]");
  if (!toggle) return;
  const open = toggle.getAttribute("aria-expanded") !== "true";
  toggle.setAttribute("aria-expanded", String(open));
  toggle.closest(".topbar").classList.toggle("open", open);
});
document.addEventListener("change", (event) => {
  const el = event.target;
  if (el.matches("select[data-autosubmit]")) el.form.requestSubmit();
});
document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const target = document.getElementById(button.dataset.copy);
  if (target && navigator.clipboard) {
    navigator.clipboard.writeText(target.textContent.trim());
    button.textContent = button.dataset.copied || button.textContent;
  }
});
// After htmx swaps a panel, put focus where the user needs it: the first invalid field.
document.addEventListener("htmx:afterSwap", (event) => {
  const invalid = document.querySelector("[aria-invalid=true]");
  if (invalid) invalid.focus();
});
// Plain forms that destroy something ask first.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form.matches("form[data-confirm]") && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
});
// A polled panel skips its refresh while the user is typing into a field inside it
// (data-poll-paused-by="<field id>"): the swap would throw the typing away. Done here rather
// than with an hx-trigger filter, which htmx would have to eval (the CSP forbids that).
document.addEventListener("htmx:beforeRequest", (event) => {
  const fieldId = event.detail.elt?.dataset?.pollPausedBy;
  const field = fieldId && document.getElementById(fieldId);
  if (field && field.value) event.preventDefault();
});
