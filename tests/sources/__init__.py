"""Tests of the sources: crawlers/ (one module per site, packs, local folders, AudioSet), the HTTP
layer and the replay server.

Named ``sources`` rather than ``crawlers`` on purpose: pytest puts ``tests/`` on ``sys.path``,
so a test package called ``crawlers`` would shadow the real ``crawlers`` package.
"""
