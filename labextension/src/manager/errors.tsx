/**
 * The manager's error line: the last failed request shown as one line, with its detail on demand
 * and a Dismiss button. It owns only how a `ShownError` is shown; which error is current, and
 * clearing it, belong to `ManagerModel`.
 */
import * as React from 'react';

import { DisclosureLink } from './layout';
import type { ShownError } from './logic';

export function ErrorLine({ error, onDismiss }: { error: ShownError; onDismiss: () => void }): JSX.Element {
  const [open, setOpen] = React.useState(false);
  return (
    <div className="llamalab-Manager-error" role="alert" data-testid="llamalab-manager-error">
      <span className="llamalab-Manager-errorMessage">{error.message}</span>
      {error.detail && <DisclosureLink open={open} onToggle={() => setOpen(!open)} />}
      <button className="llamalab-Manager-link" aria-label="Dismiss the error" onClick={onDismiss}>
        Dismiss
      </button>
      {open && error.detail && <pre className="llamalab-Manager-detail">{error.detail}</pre>}
    </div>
  );
}
