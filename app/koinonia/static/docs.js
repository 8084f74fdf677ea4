// Starts Swagger UI on the docs page (koinonia/docs.py). A file, not an inline script: the
// page's Content-Security-Policy allows only the scripts it names with its nonce.
window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    deepLinking: true,
    // No badge from the public validator service: nothing leaves this origin.
    validatorUrl: null,
  });
});
