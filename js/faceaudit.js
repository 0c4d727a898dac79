/*
 * faceaudit's browser side: one operator the App runs in the browser, no build step (the App
 * loads this file as a plain script and lends its own modules as window globals).
 *
 * clear_grid_sort clears the grid's "Sort by". FiftyOne 1.22 keeps that sort in the browser
 * (localStorage "gridSortBy-<dataset id>", the gridSortBy state of @fiftyone/state) and the server
 * applies it after every stage of the view, a saved view's own sort included: a sort left from
 * an earlier drill-down showed synthetic_outliers lowest score first (issue 15.9). No Python
 * operator can reach that state; the Python side triggers this operator before it selects a saved
 * view whose order is its point (operators/outliers.py select_saved_view).
 *
 * A saved view the user selects in the App's saved-view selector reaches no Python code (the App
 * has no view-change hook for operators), but it does change the page's address (?view=<slug>):
 * when it does, the Python operator follow_saved_view is run, which clears a grid sort that
 * would replace the newly selected view's own order. A sort the user sets on the view afterwards
 * changes no address and stays.
 */
(function () {
  "use strict";
  var operators = window.__foo__;
  var state = window.__fos__;
  var PLUGIN = "@faceaudit/face-audit";
  if (!operators || !state || !state.gridSortBy) {
    console.error("faceaudit: the App's operator or state modules are missing; clear_grid_sort is not registered");
    return;
  }

  class ClearGridSort extends operators.Operator {
    get config() {
      return new operators.OperatorConfig({
        name: "clear_grid_sort",
        label: "faceaudit: clear the grid's Sort by",
        unlisted: true,
      });
    }

    async execute(ctx) {
      ctx.state.reset(state.gridSortBy); // the App's own "-" of the Sort by box
    }
  }

  operators.registerOperator(ClearGridSort, PLUGIN);

  function viewSlug() {
    return new URLSearchParams(window.location.search).get("view");
  }

  var shown = viewSlug();
  function followSavedView() {
    var slug = viewSlug();
    if (slug === shown) return;
    shown = slug;
    if (slug) operators.executeOperator(PLUGIN + "/follow_saved_view", { view: slug });
  }

  // the App's router (the history package) moves with window.history's own methods
  ["pushState", "replaceState"].forEach(function (method) {
    var original = window.history[method];
    window.history[method] = function () {
      var result = original.apply(this, arguments);
      setTimeout(followSavedView, 0);
      return result;
    };
  });
  window.addEventListener("popstate", followSavedView);
})();
