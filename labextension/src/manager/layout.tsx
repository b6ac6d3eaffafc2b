/**
 * The manager's shared markup. It owns the pieces every section repeats: `Section` (the titled
 * `<section>` a heading labels), `Table` (the manager's table with its column-header row and the
 * optional visually hidden "Actions" column) and `DisclosureLink` (the link-styled button that
 * shows or hides details). Class names and labels here are the ones the browser tests select by.
 */
import * as React from 'react';

import type { ManagerModel, ManagerState } from './logic';

/** What each section of the manager is rendered from. */
export interface SectionProps {
  model: ManagerModel;
  state: ManagerState;
}

/** A manager section: `<section>` labelled by its `<h2>`, whose element id is `id`. */
export function Section(props: { id: string; title: string; testId?: string; children?: React.ReactNode }): JSX.Element {
  return (
    <section className="llamalab-Manager-section" aria-labelledby={props.id} data-testid={props.testId}>
      <h2 id={props.id}>{props.title}</h2>
      {props.children}
    </section>
  );
}

/** A manager table: one column header per entry of `columns`, then the unnamed actions column where `actions` is set. */
export function Table(props: { columns: readonly string[]; actions?: boolean; children?: React.ReactNode }): JSX.Element {
  return (
    <table className="llamalab-Manager-table">
      <thead>
        <tr>
          {props.columns.map(column => (
            <th key={column} scope="col">
              {column}
            </th>
          ))}
          {props.actions && (
            <th scope="col">
              <span className="llamalab-visually-hidden">Actions</span>
            </th>
          )}
        </tr>
      </thead>
      <tbody>{props.children}</tbody>
    </table>
  );
}

/** The link-styled toggle for details on demand: `hideText` while open, `showText` while closed. */
export function DisclosureLink(props: { open: boolean; onToggle: () => void; showText?: string; hideText?: string }): JSX.Element {
  return (
    <button className="llamalab-Manager-link" aria-expanded={props.open} onClick={props.onToggle}>
      {props.open ? props.hideText ?? 'Hide details' : props.showText ?? 'Details'}
    </button>
  );
}
