"""Handler bodies for the Telegram front end, one module per feature: ``photos`` (what a
user sends), ``cards`` (the settings card's buttons), ``results`` (a job's buttons),
``commands``, ``admin`` (behind one check), ``access`` (the guard) and ``errors``;
``common`` holds what several share.

Each handler gathers what it needs from the update and ``context.bot_data`` (a
``BotData``), calls plain decision functions (``check_access``, ``check_limits``,
``result_options``) and applies the result: a reply, an edited card, a queued job and
``consumers.wake()``. Wiring lives in ``bot.app``; texts in ``bot.texts``; buttons in
``bot.keyboards``.
"""
