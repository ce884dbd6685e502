/**
 * The project worklist page (platform/templates/annotation/worklist.html): the "Next case" button takes
 * the highest-ranked free case through the API and opens it. The list itself is server-rendered.
 */

import { Api, ApiError } from "./api";

interface WorklistData {
  apiBase: string;
  csrfToken?: string | null;
  project: number;
  /** A case page's address with "{id}" for the case id. */
  caseUrl: string;
}

function main(): void {
  const el = document.getElementById("worklist-data");
  const button = document.getElementById("next-case") as HTMLButtonElement | null;
  const status = document.getElementById("worklist-status");
  if (!el?.textContent || !button) return;
  const data = JSON.parse(el.textContent) as WorklistData;
  const api = new Api({ base: data.apiBase, csrfToken: data.csrfToken });
  const say = (text: string, error = false) => {
    if (!status) return;
    status.textContent = text;
    status.className = error ? "error" : "note";
  };
  const next = async () => {
    button.disabled = true;
    try {
      const found = await api.nextCase(data.project);
      if (!found) say("No case is left for you in this worklist.");
      else window.location.assign(data.caseUrl.replace("{id}", String(found.id)));
    } catch (err) {
      say(err instanceof ApiError ? err.message : `Taking the next case failed: ${(err as Error).message}`, true);
    } finally {
      button.disabled = false;
    }
  };
  button.addEventListener("click", () => void next());
  document.addEventListener("keydown", (e) => {
    const tag = (e.target as HTMLElement | null)?.tagName?.toLowerCase();
    if (e.key === " " && tag !== "input" && tag !== "select" && tag !== "textarea" && tag !== "button") {
      e.preventDefault();
      void next();
    }
  });
}

main();
