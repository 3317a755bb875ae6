"""Every option of the chosen model can be set from the command line, listed in the config
file or not; a misspelt one is refused with the nearest option."""
import json

from cli_in_process import one_paragraph, run_main


def test_an_option_the_file_does_not_list_trains(tmp_path, data_dir):
  del data_dir
  work = tmp_path / 'w'
  code, err = run_main(['--config', 'configs/default.py', '--workdir', str(work),
                        '--config.model.name=cifar_resnet18',
                        '--config.model.drop_path_rate=0.1', '--config.model.width=4',
                        '--config.train.steps=1', '--config.train.batch_size=8',
                        '--config.checkpoint.every_steps=1', '--config.optim.warmup_steps=0'])
  assert code == 0, err[-3000:]
  model = json.loads((work / 'config.json').read_text())['model']
  assert model['drop_path_rate'] == 0.1 and model['width'] == 4


def test_a_misspelt_option_is_refused_with_the_nearest_one(tmp_path):
  code, err = run_main(['--config', 'configs/default.py', '--workdir', str(tmp_path / 'w'),
                        '--config.model.name=cifar_resnet18', '--config.model.widht=4'])
  one_paragraph(code, err, "config.model.widht is not an option of model 'cifar_resnet18'",
                "Did you mean 'width'?")
