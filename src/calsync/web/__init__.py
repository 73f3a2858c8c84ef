"""The pages of DESIGN 4.6 under /app/: a technician's Calendar settings and the
dispatcher's board, signed in by one-use login links.

- ``sessions``: login links, browser sessions, CSRF tokens;
- ``pages``: the shared page machinery (who is signed in, rendering, form posts);
- ``views/``: one module per page, each gathering data through the same functions as the
  API (so roles and masking are enforced once) and handing it to one template;
- ``templates/`` (Jinja2, autoescaped) and ``static/`` (CSS, a little JS), served by
  calsync itself so the pages work with no internet; no front-end build step.

The pages fetch no JSON: everything a browser gets is the server-rendered HTML.
"""
