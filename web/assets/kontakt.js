// Moves keyboard and screen-reader focus to the message a form post led to
// (a confirmation, an error, or the list of free times), so that nobody has
// to search the page for what changed. Everything else works without script.
document.addEventListener("DOMContentLoaded", function () {
  var target = document.querySelector("[data-focus]");
  if (target) {
    target.focus();
  }
});
