/**
 * The model manager's view: a main-area ReactWidget rendering `ManagerModel` snapshots. This
 * module owns only the composition (the header with Refresh, the error line, the licence panel,
 * then one component per section, each in its own module: stored.tsx, jobs.tsx, catalog.tsx,
 * convert.tsx, hardware.tsx; with a team server, remote.tsx instead of the local store, pulls,
 * jobs and conversion, which have no use there) and the widget's life in the shell (re-reading the store when the
 * tab is shown again, disposing the model with it). Every row and control carries the
 * data-testid the browser tests look for.
 */
import { ReactWidget } from '@jupyterlab/ui-components';
import type { Message } from '@lumino/messaging';
import * as React from 'react';

import { PullSection } from './catalog';
import { ConvertSection } from './convert';
import { ErrorLine } from './errors';
import { LicenseGateBox } from './gate';
import { HardwareSection } from './hardware';
import { JobsSection } from './jobs';
import { ManagerModel, ManagerState, teamServer } from './logic';
import { TeamServerSection } from './remote';
import { StoredSection } from './stored';

export const MANAGER_ID = 'llamalab-model-manager';

function useManagerState(model: ManagerModel): ManagerState {
  const [state, setState] = React.useState(model.state);
  React.useEffect(() => model.subscribe(setState), [model]);
  return state;
}

export function ManagerView({ model }: { model: ManagerModel }): JSX.Element {
  const state = useManagerState(model);
  const remote = teamServer(state.models);
  return (
    <div className="llamalab-Manager-body">
      <header className="llamalab-Manager-header">
        <h1>llamalab models</h1>
        <button className="llamalab-Manager-button" aria-label="Refresh" disabled={state.loading} onClick={() => void model.refresh()}>
          {state.loading ? 'Refreshing…' : 'Refresh'}
        </button>
      </header>
      {state.error && <ErrorLine error={state.error} onDismiss={() => model.dismissError()} />}
      <LicenseGateBox model={model} state={state} />
      {remote ? (
        <TeamServerSection remote={remote} model={model} state={state} />
      ) : (
        <>
          <StoredSection model={model} state={state} />
          <JobsSection model={model} state={state} />
          <PullSection model={model} state={state} />
          <ConvertSection model={model} state={state} />
        </>
      )}
      <HardwareSection state={state} />
    </div>
  );
}

/** The main-area widget. */
export class ModelManagerWidget extends ReactWidget {
  constructor(readonly model: ManagerModel) {
    super();
    this.id = MANAGER_ID;
    this.addClass('llamalab-Manager');
    this.title.label = 'llamalab Models';
    this.title.caption = 'llamalab: models, pulls, conversion and hardware';
    this.title.closable = true;
  }

  protected render(): JSX.Element {
    return <ManagerView model={this.model} />;
  }

  /** Coming back to the tab re-reads the store: a chat or a kernel may have switched models. */
  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    if (this._shownOnce) {
      void this.model.refreshModels();
    }
    this._shownOnce = true;
  }

  private _shownOnce = false;

  dispose(): void {
    if (!this.isDisposed) {
      this.model.dispose();
    }
    super.dispose();
  }
}
