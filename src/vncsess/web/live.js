// Which address the live view's iframe shows.

import { api } from "./api.js";

const LINK_TTL_S = 12 * 3600; // a page left open for a working day still reconnects

/** The URL of the live desktop for an iframe: `mode` is "view" (watch only) or "control"
 * (keyboard and mouse, while this person has control).
 *
 * The one place that decides it: a signed link through serve's own proxy (same origin, no
 * VNC password in it; a control link dies when control is handed back). Before the proxy,
 * this was the session's own noVNC port: `mode === "control" ? session.control_url :
 * session.novnc_url` (which the CSP in dashboard.py would then have to allow as a frame).
 */
export async function liveUrl(session, mode) {
  const id = encodeURIComponent(session.session_id);
  return (await api.post(`/v1/sessions/${id}/links`, { mode, ttl_s: LINK_TTL_S })).path;
}
