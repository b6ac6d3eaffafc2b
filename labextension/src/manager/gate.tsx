/**
 * The licence panel: the dialog shown while a pull waits for the user to accept a model's licence
 * (`ManagerState.gate`). It owns the panel's markup and wires its buttons to the gate's `accept`
 * and to `ManagerModel.dismissGate`; it renders nothing while no licence is waiting.
 */
import * as React from 'react';

import type { SectionProps } from './layout';

export function LicenseGateBox({ model, state }: SectionProps): JSX.Element | null {
  const gate = state.gate;
  if (!gate) {
    return null;
  }
  return (
    <div className="llamalab-Manager-gate" role="dialog" aria-label="Licence to accept" data-testid="llamalab-license-gate">
      <p>
        <strong>{gate.subject}</strong> is published under <strong>{gate.license}</strong>. Read the licence and accept it to go on.
      </p>
      {gate.notice && <pre className="llamalab-Manager-notice">{gate.notice}</pre>}
      <div className="llamalab-Manager-actions">
        {gate.licenseUrl && (
          <a href={gate.licenseUrl} target="_blank" rel="noopener noreferrer" className="llamalab-Manager-licenseLink">
            Read the licence
          </a>
        )}
        <button
          className="llamalab-Manager-button llamalab-mod-accept"
          data-testid="llamalab-accept-license"
          onClick={() => void gate.accept()}
        >
          I accept
        </button>
        <button className="llamalab-Manager-button" onClick={() => model.dismissGate()}>
          Cancel
        </button>
      </div>
    </div>
  );
}
