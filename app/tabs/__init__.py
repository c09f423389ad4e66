"""One module per tab. Each holds its layout and its handlers:

- handler functions ``fn(state, *values)`` — plain functions of the shared
  :class:`~app.state.AppState` and the values of the tab's input components, returning the
  values of its outputs (testable without a server; errors are ``gr.Error`` via
  :func:`app.errors.user_errors`); an image endpoint's handler is decorated with
  :func:`~app.tabs.common.selection` and written ``fn(state, sel, *values)``: it is called
  with the shared controls' values first and gets their :class:`~app.state.Selection`;
- ``build(state, controls)`` — the ``gr.Tab`` with its components, wired to those handlers
  with :func:`bind`; :class:`~app.tabs.common.Controls` are the Detect tab's inputs that the
  other tabs read.

See :mod:`app.ui` for how they are assembled.
"""
