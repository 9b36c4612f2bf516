// The visitor pass page's print button (the CSP allows no inline script).
(function () {
  "use strict";
  var button = document.getElementById("print-pass");
  if (button) button.addEventListener("click", function () { window.print(); });
})();
